//! The `lessons` and `lesson_series` read models.

use async_trait::async_trait;
use prost::Message;
use repit_event_store::{Aggregate, EventCodec, RecordedEvent};
use repit_projections::{
    ApplyError, Projection, ProjectionTx, TableDef, bigint, enum_column, fold_order,
};
use repit_proto::repit::lesson::v1 as pb;
use sqlx::Row;

use crate::domain::lesson::{LessonCodec, interval_of};
use crate::domain::series::SeriesCodec;
use crate::domain::{LessonAggregate, SeriesAggregate};
use repit_platform::time::from_timestamp;

/// The lessons table (a view on the live generation).
pub const LESSONS_TABLE: &str = "lessons";
/// The series table.
pub const SERIES_TABLE: &str = "lesson_series";

const TABLES: &[TableDef] = &[
    TableDef {
        name: LESSONS_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                lesson_id TEXT PRIMARY KEY,
                tutor_id TEXT NOT NULL,
                student_id TEXT NOT NULL,
                series_id TEXT,
                start_at_us BIGINT NOT NULL,
                end_at_us BIGINT NOT NULL,
                duration_minutes BIGINT NOT NULL,
                time_zone TEXT NOT NULL,
                subject TEXT NOT NULL,
                state TEXT NOT NULL,
                price_minor_units BIGINT,
                price_currency TEXT,
                planned_topic TEXT NOT NULL,
                original_start_at_us BIGINT NOT NULL,
                cancelled_by TEXT,
                cancellation_kind TEXT,
                fee_applies BIGINT NOT NULL,
                counted_as_missed BIGINT NOT NULL,
                outcome_topic TEXT,
                mastery TEXT,
                revision BIGINT NOT NULL,
                created_at_us BIGINT NOT NULL,
                updated_at_us BIGINT NOT NULL,
                position_commit BIGINT NOT NULL,
                position_prepare BIGINT NOT NULL,
                projected_at_us BIGINT NOT NULL,
                resource {blob} NOT NULL
            )",
            "CREATE INDEX {table}_tutor_position ON {table} (tutor_id, position_commit, position_prepare)",
            "CREATE INDEX {table}_student_position ON {table} (student_id, position_commit, position_prepare)",
            "CREATE INDEX {table}_tutor_start ON {table} (tutor_id, start_at_us, lesson_id)",
            "CREATE INDEX {table}_student_start ON {table} (student_id, start_at_us, lesson_id)",
            "CREATE INDEX {table}_series_start ON {table} (series_id, start_at_us, lesson_id)",
        ],
    },
    TableDef {
        name: SERIES_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                series_id TEXT PRIMARY KEY,
                tutor_id TEXT NOT NULL,
                student_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                state TEXT NOT NULL,
                occurrence_count BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                created_at_us BIGINT NOT NULL,
                updated_at_us BIGINT NOT NULL,
                resource {blob} NOT NULL
            )",
            "CREATE INDEX {table}_tutor ON {table} (tutor_id, created_at_us)",
            "CREATE INDEX {table}_student ON {table} (student_id, created_at_us)",
        ],
    },
];

/// Lessons and series as the API shows them, and as analysts query them.
#[derive(Clone, Copy, Debug, Default)]
pub struct LessonsProjection;

fn micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    from_timestamp(ts).timestamp_micros()
}

/// The lowercase name of a state, as the `state` column stores it.
pub fn state_column(state: pb::LessonState) -> &'static str {
    match state {
        pb::LessonState::Unspecified => "unspecified",
        pb::LessonState::Scheduled => "scheduled",
        pb::LessonState::Conducted => "conducted",
        pb::LessonState::ExcusedAbsence => "excused_absence",
        pb::LessonState::UnexcusedAbsence => "unexcused_absence",
        pb::LessonState::Cancelled => "cancelled",
    }
}

impl LessonsProjection {
    async fn apply_lesson(
        &self,
        tx: &mut ProjectionTx,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let decoded = LessonCodec
            .decode(event)
            .map_err(|e| ApplyError::Poison(format!("{e:#}")))?;
        let table = tx.table(LESSONS_TABLE).to_owned();
        let lesson_id = event
            .stream
            .as_str()
            .trim_start_matches("lesson-")
            .to_owned();
        // A stream's first event creates the row: nothing to look up.
        let row = if event.revision == 0 {
            None
        } else {
            sqlx::query(&format!(
                "SELECT revision, resource FROM {table} WHERE lesson_id = $1"
            ))
            .bind(&lesson_id)
            .fetch_optional(tx.conn())
            .await?
        };
        let mut state = LessonAggregate::default();
        if let Some(row) = row {
            if !fold_order(row.try_get(0)?, event.revision)? {
                return Ok(()); // Folded already.
            }
            let resource: Vec<u8> = row.try_get(1)?;
            let lesson = pb::Lesson::decode(resource.as_slice())
                .map_err(|e| ApplyError::Poison(format!("stored lesson does not decode: {e}")))?;
            state.attendance = match lesson.state() {
                pb::LessonState::Conducted => pb::Attendance::Attended,
                pb::LessonState::ExcusedAbsence => pb::Attendance::ExcusedAbsence,
                pb::LessonState::UnexcusedAbsence => pb::Attendance::UnexcusedAbsence,
                _ => pb::Attendance::Unspecified,
            };
            state.lesson = Some(lesson);
        }
        state.evolve(&decoded);
        let Some(mut lesson) = state.lesson else {
            return Err(ApplyError::Poison(format!(
                "{} for lesson {lesson_id} arrived before the lesson was scheduled",
                event.event_type
            )));
        };
        lesson.revision = event.revision;
        let (start, end) = interval_of(&lesson);
        let cancellation = lesson.cancellation.as_ref();
        let outcome = lesson.outcome.as_ref();
        sqlx::query(&format!(
            "INSERT INTO {table} (lesson_id, tutor_id, student_id, series_id, start_at_us, end_at_us,
                duration_minutes, time_zone, subject, state, price_minor_units, price_currency,
                planned_topic, original_start_at_us, cancelled_by, cancellation_kind, fee_applies,
                counted_as_missed, outcome_topic, mastery, revision, created_at_us, updated_at_us,
                resource, position_commit, position_prepare, projected_at_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)
             ON CONFLICT (lesson_id) DO UPDATE SET
                start_at_us = excluded.start_at_us, end_at_us = excluded.end_at_us,
                duration_minutes = excluded.duration_minutes, time_zone = excluded.time_zone,
                subject = excluded.subject, state = excluded.state,
                price_minor_units = excluded.price_minor_units,
                price_currency = excluded.price_currency, planned_topic = excluded.planned_topic,
                cancelled_by = excluded.cancelled_by,
                cancellation_kind = excluded.cancellation_kind,
                fee_applies = excluded.fee_applies, counted_as_missed = excluded.counted_as_missed,
                outcome_topic = excluded.outcome_topic, mastery = excluded.mastery,
                revision = excluded.revision, updated_at_us = excluded.updated_at_us,
                resource = excluded.resource, position_commit = excluded.position_commit,
                position_prepare = excluded.position_prepare,
                projected_at_us = excluded.projected_at_us
             WHERE {table}.revision < excluded.revision"
        ))
        .bind(&lesson.lesson_id)
        .bind(&lesson.tutor_id)
        .bind(&lesson.student_id)
        .bind((!lesson.series_id.is_empty()).then(|| lesson.series_id.clone()))
        .bind(start.timestamp_micros())
        .bind(end.timestamp_micros())
        .bind((end - start).num_minutes())
        .bind(&lesson.time_zone)
        .bind(&lesson.subject)
        .bind(state_column(lesson.state()))
        .bind(lesson.price_override.as_ref().map(|p| p.minor_units))
        .bind(lesson.price_override.as_ref().map(|p| p.currency.clone()))
        .bind(&lesson.planned_topic)
        .bind(micros(lesson.original_start_time.as_ref()))
        .bind(cancellation.map(|c| enum_column(c.cancelled_by().as_str_name(), "CANCELLING_PARTY_")))
        .bind(cancellation.map(|c| enum_column(c.kind().as_str_name(), "CANCELLATION_KIND_")))
        .bind(i64::from(cancellation.is_some_and(|c| c.fee_applies)))
        .bind(i64::from(cancellation.is_some_and(|c| c.counted_as_missed)))
        .bind(outcome.map(|o| o.topic.clone()))
        .bind(outcome.map(|o| enum_column(o.mastery().as_str_name(), "MASTERY_")))
        .bind(bigint(event.revision)?)
        .bind(micros(lesson.created_at.as_ref()))
        .bind(micros(lesson.updated_at.as_ref()))
        .bind(lesson.encode_to_vec())
        .bind(bigint(event.position.commit())?)
        .bind(bigint(event.position.prepare())?)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn apply_series(
        &self,
        tx: &mut ProjectionTx,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let decoded = SeriesCodec
            .decode(event)
            .map_err(|e| ApplyError::Poison(format!("{e:#}")))?;
        let table = tx.table(SERIES_TABLE).to_owned();
        let series_id = event
            .stream
            .as_str()
            .trim_start_matches("series-")
            .to_owned();
        let row = sqlx::query(&format!(
            "SELECT revision, resource FROM {table} WHERE series_id = $1"
        ))
        .bind(&series_id)
        .fetch_optional(tx.conn())
        .await?;
        let mut state = SeriesAggregate::default();
        if let Some(row) = row {
            if !fold_order(row.try_get(0)?, event.revision)? {
                return Ok(());
            }
            let resource: Vec<u8> = row.try_get(1)?;
            state.series =
                Some(pb::Series::decode(resource.as_slice()).map_err(|e| {
                    ApplyError::Poison(format!("stored series does not decode: {e}"))
                })?);
        }
        let occurrence_count = state.series.as_ref().map_or(0, |s| s.occurrence_count);
        state.evolve(&decoded);
        let Some(mut series) = state.series else {
            return Err(ApplyError::Poison(format!(
                "{} for series {series_id} arrived before the series was created",
                event.event_type
            )));
        };
        if let crate::domain::SeriesEvent::EditedFromOccurrence(e) = &decoded {
            series.occurrence_count =
                occurrence_count.saturating_add(i32::try_from(e.added.len()).unwrap_or(0));
        }
        series.revision = event.revision;
        sqlx::query(&format!(
            "INSERT INTO {table} (series_id, tutor_id, student_id, subject, state, occurrence_count,
                revision, created_at_us, updated_at_us, resource)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (series_id) DO UPDATE SET
                subject = excluded.subject, state = excluded.state,
                occurrence_count = excluded.occurrence_count, revision = excluded.revision,
                updated_at_us = excluded.updated_at_us, resource = excluded.resource
             WHERE {table}.revision < excluded.revision"
        ))
        .bind(&series.series_id)
        .bind(&series.tutor_id)
        .bind(&series.student_id)
        .bind(&series.subject)
        .bind(enum_column(series.state().as_str_name(), "SERIES_STATE_"))
        .bind(i64::from(series.occurrence_count))
        .bind(bigint(event.revision)?)
        .bind(micros(series.created_at.as_ref()))
        .bind(micros(series.updated_at.as_ref()))
        .bind(series.encode_to_vec())
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for LessonsProjection {
    fn name(&self) -> &'static str {
        "lesson.lessons"
    }

    /// 2: `lessons.position_commit` / `position_prepare` (the `$all` position of the row's last
    /// event, which schedule watches follow). 3: `lessons.projected_at_us` (when the read model
    /// took the row's last change: its lag is `projected_at_us - updated_at_us`).
    fn schema_version(&self) -> i64 {
        3
    }

    fn event_types(&self) -> Vec<String> {
        vec!["repit.lesson.v1.".to_owned()]
    }

    fn tables(&self) -> &'static [TableDef] {
        TABLES
    }

    async fn apply(&self, tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let stream = event.stream.as_str();
        if stream.starts_with("lesson-") {
            self.apply_lesson(tx, event).await
        } else if stream.starts_with("series-") {
            self.apply_series(tx, event).await
        } else {
            // Schedule streams: the busy intervals are already in the lessons table.
            Ok(())
        }
    }
}
