//! Queries, answered from the read models (never by replaying streams per request).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use prost::Message;
use repit_platform::paging;
use repit_projections::ReadModelDb;
use repit_proto::repit::common::v1::TimeOfDay;
use repit_proto::repit::lesson::v1 as pb;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::access::Visibility;
use crate::application::date_pb;
use crate::calendar::{CalendarEvent, EventStatus, render};
use crate::domain::lesson::interval_of;
use crate::domain::local_time::{day_bounds, to_local};
use crate::error::AppError;
use crate::projections::{LESSONS_TABLE, SCHOOL_TUTORS_TABLE, SERIES_TABLE};

pub use paging::MAX_PAGE_SIZE;

/// Whose lessons a query is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Tutor(Uuid),
    Student(Uuid),
}

impl Owner {
    fn column(self) -> (&'static str, String) {
        match self {
            Self::Tutor(id) => ("tutor_id", id.to_string()),
            Self::Student(id) => ("student_id", id.to_string()),
        }
    }
}

/// Filters of ListLessons, parsed.
#[derive(Clone, Debug, Default)]
pub struct LessonFilter {
    pub tutor_id: Option<Uuid>,
    pub student_id: Option<Uuid>,
    pub series_id: Option<Uuid>,
    pub states: Vec<&'static str>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub newest_first: bool,
    pub page_size: i64,
    /// Where the previous page stopped: (start, lesson id).
    pub after: Option<(i64, String)>,
    /// The caller's tenancy, which always applies.
    pub visibility: Visibility,
}

fn decode_lesson(row: &AnyRow) -> Result<pb::Lesson, AppError> {
    let resource: Vec<u8> = row.try_get("resource")?;
    pb::Lesson::decode(resource.as_slice())
        .map_err(|e| AppError::Internal(format!("stored lesson does not decode: {e}")))
}

fn decode_series(row: &AnyRow) -> Result<pb::Series, AppError> {
    let resource: Vec<u8> = row.try_get("resource")?;
    pb::Series::decode(resource.as_slice())
        .map_err(|e| AppError::Internal(format!("stored series does not decode: {e}")))
}

/// An opaque page token: where the last page ended.
pub fn page_token(start_us: i64, id: &str) -> String {
    paging::int_page_token(start_us, id)
}

/// Parses a page token, or says it is malformed.
pub fn parse_page_token(token: &str) -> Result<(i64, String), AppError> {
    paging::parse_int_page_token(token)
        .ok_or_else(|| AppError::field("page.page_token", "malformed page token"))
}

/// The `resource` column of the row whose `id_column` is `id`, or NOT_FOUND naming `kind`.
async fn get_resource(
    db: &ReadModelDb,
    table: &str,
    id_column: &str,
    kind: &'static str,
    id: Uuid,
) -> Result<AnyRow, AppError> {
    sqlx::query(&format!(
        "SELECT resource FROM {table} WHERE {id_column} = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| AppError::NotFound {
        kind,
        id: id.to_string(),
    })
}

/// GetLesson.
pub async fn get_lesson(db: &ReadModelDb, lesson_id: Uuid) -> Result<pb::Lesson, AppError> {
    decode_lesson(&get_resource(db, LESSONS_TABLE, "lesson_id", "lesson", lesson_id).await?)
}

/// ListLessons: one page and the token of the next.
pub async fn list_lessons(
    db: &ReadModelDb,
    filter: &LessonFilter,
) -> Result<(Vec<pb::Lesson>, String), AppError> {
    let mut sql =
        format!("SELECT start_at_us, lesson_id, resource FROM {LESSONS_TABLE} WHERE 1 = 1");
    let mut params: Vec<Param> = Vec::new();
    for (column, id) in [
        ("tutor_id", filter.tutor_id),
        ("student_id", filter.student_id),
        ("series_id", filter.series_id),
    ] {
        if let Some(id) = id {
            params.push(Param::Text(id.to_string()));
            sql.push_str(&format!(" AND {column} = ${}", params.len()));
        }
    }
    let (visible, ids) = filter.visibility.sql(params.len() + 1);
    sql.push_str(&format!(" AND {visible}"));
    params.extend(ids.into_iter().map(Param::Text));
    if !filter.states.is_empty() {
        // States are our own constants, never user text.
        let list: Vec<String> = filter.states.iter().map(|s| format!("'{s}'")).collect();
        sql.push_str(&format!(" AND state IN ({})", list.join(", ")));
    }
    if let Some(from) = filter.from {
        params.push(Param::Int(from.timestamp_micros()));
        sql.push_str(&format!(" AND start_at_us >= ${}", params.len()));
    }
    if let Some(until) = filter.until {
        params.push(Param::Int(until.timestamp_micros()));
        sql.push_str(&format!(" AND start_at_us < ${}", params.len()));
    }
    let (cmp, order) = if filter.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((start, id)) = &filter.after {
        params.push(Param::Int(*start));
        let a = params.len();
        params.push(Param::Text(id.clone()));
        sql.push_str(&format!(
            " AND (start_at_us {cmp} ${a} OR (start_at_us = ${a} AND lesson_id {cmp} ${}))",
            a + 1
        ));
    }
    let limit = filter.page_size.clamp(1, MAX_PAGE_SIZE);
    sql.push_str(&format!(
        " ORDER BY start_at_us {order}, lesson_id {order} LIMIT {}",
        limit + 1
    ));
    let mut query = sqlx::query(&sql);
    for param in params {
        query = match param {
            Param::Text(s) => query.bind(s),
            Param::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(db.pool()).await?;
    let more = rows.len() as i64 > limit;
    let mut lessons = Vec::with_capacity(rows.len());
    let mut next = String::new();
    for row in rows.iter().take(usize::try_from(limit).unwrap_or(0)) {
        lessons.push(decode_lesson(row)?);
        if more {
            next = page_token(
                row.try_get("start_at_us")?,
                &row.try_get::<String, _>("lesson_id")?,
            );
        }
    }
    Ok((lessons, next))
}

enum Param {
    Text(String),
    Int(i64),
}

/// Lessons of `owner` starting in [from, until), in time order.
pub async fn lessons_between(
    db: &ReadModelDb,
    owner: Owner,
    visibility: &Visibility,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    include_cancelled: bool,
) -> Result<Vec<pb::Lesson>, AppError> {
    let (column, id) = owner.column();
    let cancelled = if include_cancelled {
        ""
    } else {
        " AND state <> 'cancelled'"
    };
    let rows = sqlx::query(&format!(
        "SELECT resource FROM {LESSONS_TABLE}
         WHERE {column} = $1 AND start_at_us >= $2 AND start_at_us < $3{cancelled}
         ORDER BY start_at_us, lesson_id"
    ))
    .bind(id)
    .bind(from.timestamp_micros())
    .bind(until.timestamp_micros())
    .fetch_all(db.pool())
    .await?;
    let mut lessons = Vec::with_capacity(rows.len());
    for row in &rows {
        let lesson = decode_lesson(row)?;
        // A tutor looking at a student's schedule sees only the lessons they teach.
        if visibility.allows(&lesson.tutor_id, &lesson.student_id) {
            lessons.push(lesson);
        }
    }
    Ok(lessons)
}

fn time_of_day(at: chrono::NaiveDateTime) -> TimeOfDay {
    use chrono::Timelike;
    TimeOfDay {
        hours: i32::try_from(at.hour()).unwrap_or(0),
        minutes: i32::try_from(at.minute()).unwrap_or(0),
    }
}

/// A lesson placed on a viewer's schedule in `zone`.
pub fn schedule_entry(lesson: pb::Lesson, zone: Tz) -> pb::ScheduleEntry {
    let (start, end) = interval_of(&lesson);
    let (local_start, local_end) = (to_local(zone, start), to_local(zone, end));
    pb::ScheduleEntry {
        lesson: Some(lesson),
        local_start_date: Some(date_pb(local_start.date())),
        local_start_time: Some(time_of_day(local_start)),
        local_end_date: Some(date_pb(local_end.date())),
        local_end_time: Some(time_of_day(local_end)),
        // Names come from the user and student services' events, which are not built yet.
        tutor_display_name: String::new(),
        student_display_name: String::new(),
    }
}

/// The lessons starting on each of `days` (local dates in `zone`), one DaySchedule per day.
pub async fn days(
    db: &ReadModelDb,
    owner: Owner,
    visibility: &Visibility,
    zone: Tz,
    days: &[NaiveDate],
    include_cancelled: bool,
) -> Result<Vec<pb::DaySchedule>, AppError> {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Ok(vec![]);
    };
    let (from, _) = day_bounds(zone, *first);
    let (_, until) = day_bounds(zone, *last);
    let lessons = lessons_between(db, owner, visibility, from, until, include_cancelled).await?;
    let mut schedule: Vec<pb::DaySchedule> = days
        .iter()
        .map(|d| pb::DaySchedule {
            date: Some(date_pb(*d)),
            entries: vec![],
        })
        .collect();
    for lesson in lessons {
        let (start, _) = interval_of(&lesson);
        let local_date = to_local(zone, start).date();
        if let Some(index) = days.iter().position(|d| *d == local_date) {
            schedule[index].entries.push(schedule_entry(lesson, zone));
        }
    }
    Ok(schedule)
}

/// ExportCalendar: the iCalendar text of `owner`'s lessons in [from, until).
pub async fn calendar(
    db: &ReadModelDb,
    owner: Owner,
    visibility: &Visibility,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    include_cancelled: bool,
    english: bool,
) -> Result<String, AppError> {
    let lessons = lessons_between(db, owner, visibility, from, until, include_cancelled).await?;
    let events: Vec<CalendarEvent> = lessons
        .iter()
        .map(|lesson| {
            let (start, end) = interval_of(lesson);
            let cancelled = lesson.state() == pb::LessonState::Cancelled;
            let summary = match (english, cancelled) {
                (true, false) => format!("Lesson: {}", lesson.subject),
                (true, true) => format!("Cancelled: {}", lesson.subject),
                (false, false) => format!("Урок: {}", lesson.subject),
                (false, true) => format!("Отменён: {}", lesson.subject),
            };
            CalendarEvent {
                uid: lesson.lesson_id.clone(),
                start,
                end,
                summary,
                description: lesson.planned_topic.clone(),
                status: if cancelled {
                    EventStatus::Cancelled
                } else {
                    EventStatus::Confirmed
                },
                sequence: u32::try_from(lesson.revision).unwrap_or(u32::MAX),
                last_modified: repit_platform::time::from_timestamp(lesson.updated_at.as_ref()),
            }
        })
        .collect();
    let name = if english {
        "RepitBot lessons"
    } else {
        "Уроки RepitBot"
    };
    Ok(render(name, &events, Utc::now()))
}

/// The SCHEDULED lessons of one tutor, student and subject starting after `after`, in time
/// order, at most `limit`: the chain a topic shift walks.
pub async fn following_lessons(
    db: &ReadModelDb,
    lesson: &pb::Lesson,
    after: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, AppError> {
    let rows = sqlx::query(&format!(
        "SELECT lesson_id FROM {LESSONS_TABLE}
         WHERE tutor_id = $1 AND student_id = $2 AND subject = $3 AND state = 'scheduled'
           AND start_at_us > $4 AND lesson_id <> $5
         ORDER BY start_at_us, lesson_id LIMIT {limit}"
    ))
    .bind(&lesson.tutor_id)
    .bind(&lesson.student_id)
    .bind(&lesson.subject)
    .bind(after.timestamp_micros())
    .bind(&lesson.lesson_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0)?;
            Uuid::parse_str(&id).map_err(|e| AppError::Internal(e.to_string()))
        })
        .collect()
}

/// GetSeries.
pub async fn get_series(db: &ReadModelDb, series_id: Uuid) -> Result<pb::Series, AppError> {
    decode_series(&get_resource(db, SERIES_TABLE, "series_id", "series", series_id).await?)
}

/// ListSeries, newest first.
pub async fn list_series(
    db: &ReadModelDb,
    visibility: &Visibility,
    tutor_id: Option<Uuid>,
    student_id: Option<Uuid>,
    states: &[&'static str],
    page_size: i64,
    after: Option<(i64, String)>,
) -> Result<(Vec<pb::Series>, String), AppError> {
    let mut sql =
        format!("SELECT created_at_us, series_id, resource FROM {SERIES_TABLE} WHERE 1 = 1");
    let mut params: Vec<Param> = Vec::new();
    if let Some(id) = tutor_id {
        params.push(Param::Text(id.to_string()));
        sql.push_str(&format!(" AND tutor_id = ${}", params.len()));
    }
    if let Some(id) = student_id {
        params.push(Param::Text(id.to_string()));
        sql.push_str(&format!(" AND student_id = ${}", params.len()));
    }
    let (visible, ids) = visibility.sql(params.len() + 1);
    sql.push_str(&format!(" AND {visible}"));
    params.extend(ids.into_iter().map(Param::Text));
    if !states.is_empty() {
        let list: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
        sql.push_str(&format!(" AND state IN ({})", list.join(", ")));
    }
    if let Some((created, id)) = after {
        params.push(Param::Int(created));
        let a = params.len();
        params.push(Param::Text(id));
        sql.push_str(&format!(
            " AND (created_at_us < ${a} OR (created_at_us = ${a} AND series_id < ${}))",
            a + 1
        ));
    }
    let limit = page_size.clamp(1, MAX_PAGE_SIZE);
    sql.push_str(&format!(
        " ORDER BY created_at_us DESC, series_id DESC LIMIT {}",
        limit + 1
    ));
    let mut query = sqlx::query(&sql);
    for param in params {
        query = match param {
            Param::Text(s) => query.bind(s),
            Param::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(db.pool()).await?;
    let more = rows.len() as i64 > limit;
    let mut series = Vec::new();
    let mut next = String::new();
    for row in rows.iter().take(usize::try_from(limit).unwrap_or(0)) {
        series.push(decode_series(row)?);
        if more {
            next = page_token(
                row.try_get("created_at_us")?,
                &row.try_get::<String, _>("series_id")?,
            );
        }
    }
    Ok((series, next))
}

/// The tutors who teach in any of `schools` (not empty).
pub async fn tutors_of_schools(
    db: &ReadModelDb,
    schools: &[String],
) -> Result<Vec<String>, AppError> {
    let placeholders: Vec<String> = (1..=schools.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT DISTINCT tutor_id FROM {SCHOOL_TUTORS_TABLE} WHERE active = 1 AND school_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for school in schools {
        query = query.bind(school.clone());
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|row| Ok(row.try_get::<String, _>(0)?))
        .collect()
}
