//! The gRPC adapter: proto in, application call, proto out. No rules live here; who may do what
//! is [`crate::access`], asked with the caller the auth layer put into the request.
//!
//! Schedule views default to the caller's profile zone, which the access token carries
//! (`zoneinfo`). RPCs not built yet answer UNIMPLEMENTED.

use chrono::{Datelike, TimeDelta, Utc};
use pb::lesson_service_server::LessonService;
use repit_platform::status::not_implemented;
use repit_proto::repit::common::v1 as common;
use repit_proto::repit::lesson::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::access::{Action, Actor};
use crate::application::{Cancellation, LessonApplication, NewLesson, NewSeries, SeriesChange};
use crate::convert::{Fields, state_filter};
use crate::domain::lesson::{RecordOutcome, UpdateLessonDetails};
use crate::domain::local_time::week_start;
use crate::error::AppError;
use crate::queries::{self, LessonFilter, Owner};
use crate::watch::{WatchSpec, Watches};
use repit_platform::time::timestamp;

/// The most days a calendar export or watch covers.
const MAX_RANGE_DAYS: i64 = 366;

/// `repit.lesson.v1.LessonService` over the application.
#[derive(Clone, Debug)]
pub struct LessonGrpc {
    app: LessonApplication,
    watches: Watches,
}

impl LessonGrpc {
    /// The caller, as the auth layer verified it and the access rules see them.
    async fn actor<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        let caller = repit_platform::auth::caller(request)?.clone();
        self.app.actor(caller).await.map_err(status)
    }

    /// The service; open watches end with UNAVAILABLE when `shutdown` fires.
    pub fn new(app: LessonApplication, shutdown: tokio_util::sync::CancellationToken) -> Self {
        Self {
            app,
            watches: Watches::new(shutdown),
        }
    }

    /// The tonic server to mount: behind `auth` (every lesson RPC needs a caller), with the
    /// request context (correlation id, traceparent, actor) made ambient for every handler so
    /// the events it appends carry it.
    pub fn into_server(
        self,
        auth: &repit_platform::auth::AuthLayer,
    ) -> repit_platform::request_context::RequestContextService<
        repit_platform::auth::AuthService<pb::lesson_service_server::LessonServiceServer<Self>>,
    > {
        use tower::Layer;
        repit_platform::RequestContextLayer
            .layer(auth.layer(pb::lesson_service_server::LessonServiceServer::new(self)))
    }
}

fn status(error: AppError) -> Status {
    error.into_status("")
}

fn method(name: &str) -> Status {
    not_implemented(&format!("repit.lesson.v1.LessonService/{name}"))
}

/// Whose schedule or calendar a view shows.
enum Whose<'a> {
    Tutor(&'a str),
    Student(&'a str),
    Parent(&'a str),
    /// The caller's own.
    Caller,
}

/// The owner of a schedule view the caller asked for, checked against their tenancy: another
/// tutor's schedule, or a student the caller has nothing to do with, is NOT_FOUND. A tutor may
/// name any student; the view then holds only the lessons that tutor teaches (the visibility
/// filter), so nothing about other tenancies shows.
fn view_owner(
    fields: &mut Fields,
    actor: &Actor,
    whose: Whose<'_>,
    field: &str,
) -> Result<Option<Owner>, AppError> {
    let not_found = |kind: &'static str, id: &str| AppError::NotFound {
        kind,
        id: id.to_owned(),
    };
    let parents_child = |parent: &str| -> Result<Option<Owner>, AppError> {
        if parent != actor.user_id() {
            return Err(AppError::Forbidden(
                "a parent's schedule is shown to that parent only",
            ));
        }
        match actor.children() {
            [child] => Ok(Uuid::parse_str(child).ok().map(Owner::Student)),
            [] => Err(AppError::Forbidden("the caller has no linked children")),
            _ => Err(AppError::Unimplemented(
                "a combined schedule of several children is not built yet: ask per child with student_id"
                    .into(),
            )),
        }
    };
    match whose {
        Whose::Tutor(id) => {
            let tutor = fields.checked_uuid(&format!("{field}.tutor_id"), id);
            if tutor.is_some() && !actor.manages(id) {
                return Err(not_found("tutor", id));
            }
            Ok(Some(Owner::Tutor(tutor.unwrap_or_default())))
        }
        Whose::Student(id) => {
            let student = fields.checked_uuid(&format!("{field}.student_id"), id);
            // A tutor or admin may name any student: the view keeps only the lessons they may
            // see.
            let may_look = actor.manages_any() || actor.is_student_side(id);
            if student.is_some() && !may_look {
                return Err(not_found("student", id));
            }
            Ok(Some(Owner::Student(student.unwrap_or_default())))
        }
        Whose::Parent(id) => parents_child(id),
        Whose::Caller => {
            let own = [
                actor.is_tutor(),
                actor.is_student(),
                !actor.children().is_empty(),
            ];
            if own.iter().filter(|held| **held).count() != 1 {
                fields.bad(
                    field,
                    "required: the caller holds several roles (or none) with a schedule of their own",
                );
                return Ok(None);
            }
            let me = Uuid::parse_str(actor.user_id()).ok();
            if actor.is_tutor() {
                Ok(me.map(Owner::Tutor))
            } else if actor.is_student() {
                Ok(me.map(Owner::Student))
            } else {
                parents_child(actor.user_id())
            }
        }
    }
}

fn schedule_owner(
    fields: &mut Fields,
    actor: &Actor,
    scope: Option<&pb::ScheduleScope>,
) -> Result<Option<Owner>, AppError> {
    use pb::schedule_scope::Scope;
    let whose = match scope.and_then(|s| s.scope.as_ref()) {
        Some(Scope::TutorId(id)) => Whose::Tutor(id),
        Some(Scope::StudentId(id)) => Whose::Student(id),
        Some(Scope::ParentUserId(id)) => Whose::Parent(id),
        None => Whose::Caller,
    };
    view_owner(fields, actor, whose, "scope")
}

/// The tutor a new lesson or series is for: the named one, or the calling tutor. Students and
/// parents may not schedule (PERMISSION_DENIED); another tutor is NOT_FOUND.
fn scheduling_tutor(fields: &mut Fields, actor: &Actor, tutor_id: &str) -> Result<Uuid, AppError> {
    if !actor.manages_any() {
        return Err(AppError::Forbidden(
            "only tutors and admins schedule lessons",
        ));
    }
    let tutor_id = if tutor_id.is_empty() {
        if !actor.is_tutor() {
            fields.bad("tutor_id", "required (the caller is not a tutor)");
            return Ok(Uuid::nil());
        }
        actor.user_id()
    } else {
        tutor_id
    };
    // A malformed id is reported with the other fields; a well-formed one of another tutor is
    // not found (the nil UUID included: it is nobody's tenancy).
    let tutor = fields.checked_uuid("tutor_id", tutor_id);
    if tutor.is_some() && !actor.manages(tutor_id) {
        return Err(AppError::NotFound {
            kind: "tutor",
            id: tutor_id.to_owned(),
        });
    }
    Ok(tutor.unwrap_or_default())
}

/// Occurrences left out for a conflict; the conflicting lesson is named only to its own tutor.
fn skipped_pb(
    skipped: &[(
        chrono::NaiveDate,
        chrono::DateTime<Utc>,
        crate::domain::Conflict,
    )],
    tutor: &str,
) -> Vec<pb::SkippedOccurrence> {
    skipped
        .iter()
        .map(|(date, start, conflict)| pb::SkippedOccurrence {
            local_date: Some(crate::application::date_pb(*date)),
            start_time: Some(timestamp(*start)),
            conflict: Some(pb::ScheduleConflict {
                party: match conflict.party {
                    crate::domain::Party::Tutor => pb::ConflictParty::Tutor,
                    crate::domain::Party::Student => pb::ConflictParty::Student,
                } as i32,
                lesson_id: if conflict.tutor_id == tutor {
                    conflict.lesson_id.clone()
                } else {
                    String::new()
                },
                time_range: Some(common::TimeRange {
                    start: Some(timestamp(conflict.start)),
                    end: Some(timestamp(conflict.end)),
                }),
            }),
        })
        .collect()
}

/// The zone a view is rendered in: the requested one, else the caller's profile zone (the
/// token's `zoneinfo`).
fn viewer_zone(fields: &mut Fields, actor: &Actor, zone: &str) -> chrono_tz::Tz {
    match (zone.is_empty(), actor.time_zone()) {
        (false, _) => fields.zone("time_zone", zone),
        (true, Some(profile)) => fields.zone("time_zone", profile),
        (true, None) => {
            fields.bad(
                "time_zone",
                "required: the access token names no profile zone",
            );
            chrono_tz::UTC
        }
    }
}

#[tonic::async_trait]
impl LessonService for LessonGrpc {
    async fn schedule_lesson(
        &self,
        request: Request<pb::ScheduleLessonRequest>,
    ) -> Result<Response<pb::ScheduleLessonResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let tutor_id = scheduling_tutor(&mut f, &actor, &r.tutor_id).map_err(status)?;
        let student_id = f.uuid("student_id", &r.student_id);
        let start = f.timestamp("start_time", r.start_time.as_ref());
        let duration = match &r.duration {
            Some(d) => f.duration("duration", d),
            None => {
                f.bad(
                    "duration",
                    "required (the tutor's default duration is not known yet)",
                );
                TimeDelta::zero()
            }
        };
        f.zone("time_zone", &r.time_zone);
        let subject = f.text("subject", &r.subject, 1, 100);
        let planned_topic = f.text("planned_topic", &r.planned_topic, 0, 500);
        let price_override = f.money("price_override", r.price_override.as_ref());
        if !r.request_id.is_empty() {
            f.uuid("request_id", &r.request_id);
        }
        f.finish().map_err(status)?;
        let tutor = tutor_id.to_string();
        let lesson = self
            .app
            .schedule_lesson(NewLesson {
                request_id: r.request_id,
                tutor_id,
                student_id,
                start,
                duration,
                time_zone: r.time_zone,
                subject,
                price_override,
                planned_topic,
            })
            .await
            .map_err(|e| e.into_status(&tutor))?;
        Ok(Response::new(pb::ScheduleLessonResponse {
            revision: lesson.revision,
            lesson: Some(lesson),
            outside_working_hours: false,
        }))
    }

    async fn get_lesson(
        &self,
        request: Request<pb::GetLessonRequest>,
    ) -> Result<Response<pb::GetLessonResponse>, Status> {
        let actor = self.actor(&request).await?;
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &request.get_ref().lesson_id);
        f.finish().map_err(status)?;
        let lesson = queries::get_lesson(self.app.read_models(), id)
            .await
            .map_err(status)?;
        actor
            .check(
                Action::Read,
                &lesson.tutor_id,
                &lesson.student_id,
                "lesson",
                &lesson.lesson_id,
            )
            .map_err(status)?;
        Ok(Response::new(pb::GetLessonResponse {
            lesson: Some(lesson),
        }))
    }

    async fn list_lessons(
        &self,
        request: Request<pb::ListLessonsRequest>,
    ) -> Result<Response<pb::ListLessonsResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let range = r.time_range.unwrap_or_default();
        let filter = LessonFilter {
            tutor_id: f.optional_uuid("tutor_id", &r.tutor_id),
            student_id: f.optional_uuid("student_id", &r.student_id),
            series_id: f.optional_uuid("series_id", &r.series_id),
            states: state_filter(&mut f, &r.states),
            from: range
                .start
                .as_ref()
                .map(|t| f.timestamp("time_range.start", Some(t))),
            until: range
                .end
                .as_ref()
                .map(|t| f.timestamp("time_range.end", Some(t))),
            newest_first: r.newest_first,
            page_size: Fields::page_size(r.page.as_ref()),
            after: None,
            visibility: actor.visibility(),
        };
        let token = r.page.map(|p| p.page_token).unwrap_or_default();
        f.finish().map_err(status)?;
        let filter = LessonFilter {
            after: if token.is_empty() {
                None
            } else {
                Some(queries::parse_page_token(&token).map_err(status)?)
            },
            ..filter
        };
        let (lessons, next) = queries::list_lessons(self.app.read_models(), &filter)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListLessonsResponse {
            lessons,
            page: Some(common::PageResponse {
                next_page_token: next,
            }),
        }))
    }

    async fn update_lesson(
        &self,
        request: Request<pb::UpdateLessonRequest>,
    ) -> Result<Response<pb::UpdateLessonResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &r.lesson_id);
        let paths = f.mask(
            r.update_mask.as_ref(),
            &["subject", "price_override", "planned_topic"],
        );
        let has = |p: &str| paths.iter().any(|x| x == p);
        let update = UpdateLessonDetails {
            subject: has("subject").then(|| f.text("subject", &r.subject, 1, 100)),
            price_override: has("price_override")
                .then(|| f.money("price_override", r.price_override.as_ref())),
            planned_topic: has("planned_topic")
                .then(|| f.text("planned_topic", &r.planned_topic, 0, 500)),
            by_series_edit: false,
            actor: actor.user_id().to_owned(),
            now: Utc::now(),
        };
        f.finish().map_err(status)?;
        let lesson = self
            .app
            .update_lesson(&actor, id, update, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateLessonResponse {
            revision: lesson.revision,
            lesson: Some(lesson),
        }))
    }

    async fn reschedule_lesson(
        &self,
        request: Request<pb::RescheduleLessonRequest>,
    ) -> Result<Response<pb::RescheduleLessonResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &r.lesson_id);
        let start = f.timestamp("new_start_time", r.new_start_time.as_ref());
        let duration = r
            .new_duration
            .as_ref()
            .map(|d| f.duration("new_duration", d));
        let zone = (!r.time_zone.is_empty()).then(|| {
            f.zone("time_zone", &r.time_zone);
            r.time_zone.clone()
        });
        let reason = f.text("reason", &r.reason, 0, 500);
        f.finish().map_err(status)?;
        let lesson = self
            .app
            .reschedule_lesson(
                &actor,
                id,
                start,
                duration,
                zone,
                reason,
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RescheduleLessonResponse {
            revision: lesson.revision,
            lesson: Some(lesson),
            outside_working_hours: false,
        }))
    }

    async fn cancel_lesson(
        &self,
        request: Request<pb::CancelLessonRequest>,
    ) -> Result<Response<pb::CancelLessonResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &r.lesson_id);
        let reason = f.text("reason", &r.reason, 1, 500);
        // Unspecified is decided by the caller's side of the lesson.
        let party = r.cancelled_by();
        f.finish().map_err(status)?;
        let lesson = self
            .app
            .cancel_lesson(
                &actor,
                id,
                Cancellation {
                    cancelled_by: party,
                    by_student_side: false,
                    reason,
                    waive_fee: r.waive_fee,
                    cause: pb::CancellationCause::Requested,
                    expected_revision: r.expected_revision,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CancelLessonResponse {
            revision: lesson.revision,
            cancellation: lesson.cancellation.clone(),
            lesson: Some(lesson),
        }))
    }

    async fn mark_attendance(
        &self,
        request: Request<pb::MarkAttendanceRequest>,
    ) -> Result<Response<pb::MarkAttendanceResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &r.lesson_id);
        if r.attendance() == pb::Attendance::Unspecified {
            f.bad("attendance", "required");
        }
        let note = f.text("note", &r.note, 0, 500);
        f.finish().map_err(status)?;
        let (lesson, outcome_withdrawn) = self
            .app
            .mark_attendance(&actor, id, r.attendance(), note, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MarkAttendanceResponse {
            revision: lesson.revision,
            lesson: Some(lesson),
            outcome_withdrawn,
        }))
    }

    async fn record_lesson_outcome(
        &self,
        request: Request<pb::RecordLessonOutcomeRequest>,
    ) -> Result<Response<pb::RecordLessonOutcomeResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("lesson_id", &r.lesson_id);
        let topic = f.text("topic", &r.topic, 0, 200);
        if r.skills.len() > 20 {
            f.bad("skills", "at most 20 skills");
        }
        for (i, skill) in r.skills.iter().enumerate() {
            f.text(&format!("skills[{i}]"), skill, 1, 100);
        }
        let comment = f.text("comment", &r.comment, 0, 2000);
        f.finish().map_err(status)?;
        let lesson = self
            .app
            .record_outcome(
                &actor,
                id,
                RecordOutcome {
                    topic,
                    skills: r.skills.clone(),
                    mastery: r.mastery(),
                    comment,
                    actor: actor.user_id().to_owned(),
                    now: Utc::now(),
                },
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RecordLessonOutcomeResponse {
            revision: lesson.revision,
            lesson: Some(lesson),
        }))
    }

    async fn shift_planned_topics(
        &self,
        request: Request<pb::ShiftPlannedTopicsRequest>,
    ) -> Result<Response<pb::ShiftPlannedTopicsResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        f.uuid("request_id", &r.request_id);
        let id = f.uuid("lesson_id", &r.lesson_id);
        f.finish().map_err(status)?;
        let (shifts, unplaced_topic) = self
            .app
            .shift_planned_topics(&actor, id, &r.request_id, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ShiftPlannedTopicsResponse {
            shifts,
            unplaced_topic,
        }))
    }

    async fn create_series(
        &self,
        request: Request<pb::CreateSeriesRequest>,
    ) -> Result<Response<pb::CreateSeriesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let tutor_id = scheduling_tutor(&mut f, &actor, &r.tutor_id).map_err(status)?;
        let student_id = f.uuid("student_id", &r.student_id);
        let subject = f.text("subject", &r.subject, 1, 100);
        let duration = match &r.duration {
            Some(d) => f.duration("duration", d),
            None => {
                f.bad(
                    "duration",
                    "required (the tutor's default duration is not known yet)",
                );
                TimeDelta::zero()
            }
        };
        let price_override = f.money("price_override", r.price_override.as_ref());
        if !r.request_id.is_empty() {
            f.uuid("request_id", &r.request_id);
        }
        let recurrence = f.recurrence(r.recurrence.as_ref());
        f.finish().map_err(status)?;
        let Some((recurrence, recurrence_pb)) = recurrence else {
            return Err(status(AppError::field("recurrence", "invalid")));
        };
        let tutor = tutor_id.to_string();
        let created = self
            .app
            .create_series(NewSeries {
                request_id: r.request_id,
                tutor_id,
                student_id,
                subject,
                duration,
                price_override,
                recurrence,
                recurrence_pb,
                skip_conflicts: r.skip_conflicts,
            })
            .await
            .map_err(|e| e.into_status(&tutor))?;
        let skipped = skipped_pb(&created.skipped, &tutor);
        Ok(Response::new(pb::CreateSeriesResponse {
            revision: created.series.revision,
            series: Some(created.series),
            lessons: created.lessons,
            skipped,
        }))
    }

    async fn get_series(
        &self,
        request: Request<pb::GetSeriesRequest>,
    ) -> Result<Response<pb::GetSeriesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let mut f = Fields::new();
        let id = f.uuid("series_id", &request.get_ref().series_id);
        f.finish().map_err(status)?;
        let series = queries::get_series(self.app.read_models(), id)
            .await
            .map_err(status)?;
        actor
            .check(
                Action::Read,
                &series.tutor_id,
                &series.student_id,
                "series",
                &series.series_id,
            )
            .map_err(status)?;
        Ok(Response::new(pb::GetSeriesResponse {
            series: Some(series),
        }))
    }

    async fn list_series(
        &self,
        request: Request<pb::ListSeriesRequest>,
    ) -> Result<Response<pb::ListSeriesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let tutor_id = f.optional_uuid("tutor_id", &r.tutor_id);
        let student_id = f.optional_uuid("student_id", &r.student_id);
        let states: Vec<&'static str> = r
            .states
            .iter()
            .filter_map(|s| match pb::SeriesState::try_from(*s) {
                Ok(pb::SeriesState::Active) => Some("active"),
                Ok(pb::SeriesState::Ended) => Some("ended"),
                _ => {
                    f.bad("states", format!("unknown series state {s}"));
                    None
                }
            })
            .collect();
        let token = r
            .page
            .as_ref()
            .map(|p| p.page_token.clone())
            .unwrap_or_default();
        let size = Fields::page_size(r.page.as_ref());
        f.finish().map_err(status)?;
        let after = if token.is_empty() {
            None
        } else {
            Some(queries::parse_page_token(&token).map_err(status)?)
        };
        let (series, next) = queries::list_series(
            self.app.read_models(),
            &actor.visibility(),
            tutor_id,
            student_id,
            &states,
            size,
            after,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::ListSeriesResponse {
            series,
            page: Some(common::PageResponse {
                next_page_token: next,
            }),
        }))
    }

    async fn update_series(
        &self,
        request: Request<pb::UpdateSeriesRequest>,
    ) -> Result<Response<pb::UpdateSeriesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let series_id = f.uuid("series_id", &r.series_id);
        let from_lesson_id = f.uuid("from_lesson_id", &r.from_lesson_id);
        let paths = f.mask(
            r.update_mask.as_ref(),
            &["recurrence", "duration", "subject", "price_override"],
        );
        let has = |p: &str| paths.iter().any(|x| x == p);
        if has("recurrence") && r.recurrence.is_none() {
            f.bad("recurrence", "required when named in update_mask");
        }
        let duration = if has("duration") {
            match &r.duration {
                Some(d) => Some(f.duration("duration", d)),
                None => {
                    f.bad("duration", "required when named in update_mask");
                    None
                }
            }
        } else {
            None
        };
        let change = SeriesChange {
            series_id,
            from_lesson_id,
            recurrence: if has("recurrence") {
                r.recurrence.clone()
            } else {
                None
            },
            duration,
            subject: has("subject").then(|| f.text("subject", &r.subject, 1, 100)),
            price_override: has("price_override")
                .then(|| f.money("price_override", r.price_override.as_ref())),
            skip_conflicts: r.skip_conflicts,
            expected_revision: r.expected_revision,
        };
        f.finish().map_err(status)?;
        let changed = self
            .app
            .update_series(&actor, change)
            .await
            .map_err(status)?;
        let tutor = changed.series.tutor_id.clone();
        Ok(Response::new(pb::UpdateSeriesResponse {
            revision: changed.series.revision,
            skipped: skipped_pb(&changed.skipped, &tutor),
            series: Some(changed.series),
            affected_lessons: changed.affected,
        }))
    }

    async fn end_series(
        &self,
        request: Request<pb::EndSeriesRequest>,
    ) -> Result<Response<pb::EndSeriesResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let id = f.uuid("series_id", &r.series_id);
        let from = f.date("from_date", r.from_date.as_ref());
        let reason = f.text("reason", &r.reason, 0, 500);
        f.finish().map_err(status)?;
        let (series, cancelled) = self
            .app
            .end_series(&actor, id, from, reason, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EndSeriesResponse {
            revision: series.revision,
            series: Some(series),
            cancelled_lesson_ids: cancelled,
        }))
    }

    async fn get_day_schedule(
        &self,
        request: Request<pb::GetDayScheduleRequest>,
    ) -> Result<Response<pb::GetDayScheduleResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let owner = schedule_owner(&mut f, &actor, r.scope.as_ref()).map_err(status)?;
        let zone = viewer_zone(&mut f, &actor, &r.time_zone);
        let date = f.date("date", r.date.as_ref());
        if r.date.is_none() {
            f.bad("date", "required");
        }
        f.finish().map_err(status)?;
        let (Some(owner), Some(date)) = (owner, date) else {
            return Err(status(AppError::field("scope", "invalid")));
        };
        let mut days = queries::days(
            self.app.read_models(),
            owner,
            &actor.visibility(),
            zone,
            &[date],
            r.include_cancelled,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::GetDayScheduleResponse {
            time_zone: zone.name().to_owned(),
            day: days.pop(),
        }))
    }

    async fn get_week_schedule(
        &self,
        request: Request<pb::GetWeekScheduleRequest>,
    ) -> Result<Response<pb::GetWeekScheduleResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let owner = schedule_owner(&mut f, &actor, r.scope.as_ref()).map_err(status)?;
        let zone = viewer_zone(&mut f, &actor, &r.time_zone);
        let date = f.date("date", r.date.as_ref());
        if r.date.is_none() {
            f.bad("date", "required");
        }
        let first = match r.first_day_of_week() {
            common::Weekday::Unspecified | common::Weekday::Monday => chrono::Weekday::Mon,
            common::Weekday::Tuesday => chrono::Weekday::Tue,
            common::Weekday::Wednesday => chrono::Weekday::Wed,
            common::Weekday::Thursday => chrono::Weekday::Thu,
            common::Weekday::Friday => chrono::Weekday::Fri,
            common::Weekday::Saturday => chrono::Weekday::Sat,
            common::Weekday::Sunday => chrono::Weekday::Sun,
        };
        f.finish().map_err(status)?;
        let (Some(owner), Some(date)) = (owner, date) else {
            return Err(status(AppError::field("scope", "invalid")));
        };
        let start = week_start(date, first);
        let week: Vec<_> = start.iter_days().take(7).collect();
        let days = queries::days(
            self.app.read_models(),
            owner,
            &actor.visibility(),
            zone,
            &week,
            r.include_cancelled,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::GetWeekScheduleResponse {
            time_zone: zone.name().to_owned(),
            days,
        }))
    }

    type WatchScheduleStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::WatchScheduleResponse, Status>>;

    async fn watch_schedule(
        &self,
        request: Request<pb::WatchScheduleRequest>,
    ) -> Result<Response<Self::WatchScheduleStream>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let owner = schedule_owner(&mut f, &actor, r.scope.as_ref()).map_err(status)?;
        let zone = viewer_zone(&mut f, &actor, &r.time_zone);
        let range = r.time_range.unwrap_or_default();
        let from = f.timestamp("time_range.start", range.start.as_ref());
        let until = f.timestamp("time_range.end", range.end.as_ref());
        if until <= from || until - from > TimeDelta::days(MAX_RANGE_DAYS) {
            f.bad(
                "time_range",
                "end must follow start, at most 366 days later",
            );
        }
        f.finish().map_err(status)?;
        let Some(owner) = owner else {
            return Err(status(AppError::field("scope", "required")));
        };
        let spec = WatchSpec {
            owner,
            visibility: actor.visibility(),
            from,
            until,
            zone,
            include_cancelled: r.include_cancelled,
        };
        let receiver = self
            .watches
            .open(self.app.read_models().clone(), spec)
            .await
            .map_err(status)?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    async fn export_calendar(
        &self,
        request: Request<pb::ExportCalendarRequest>,
    ) -> Result<Response<pb::ExportCalendarResponse>, Status> {
        use pb::calendar_owner::Owner as Which;
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let mut f = Fields::new();
        let whose = match r.owner.as_ref().and_then(|o| o.owner.as_ref()) {
            Some(Which::TutorId(id)) => Whose::Tutor(id),
            Some(Which::StudentId(id)) => Whose::Student(id),
            None => Whose::Caller,
        };
        let owner = view_owner(&mut f, &actor, whose, "owner").map_err(status)?;
        let now = Utc::now();
        let range = r.time_range.unwrap_or_default();
        let from = match &range.start {
            Some(t) => f.timestamp("time_range.start", Some(t)),
            None => now - TimeDelta::days(30),
        };
        let until = match &range.end {
            Some(t) => f.timestamp("time_range.end", Some(t)),
            None => now + TimeDelta::days(180),
        };
        if until <= from || until - from > TimeDelta::days(MAX_RANGE_DAYS) {
            f.bad(
                "time_range",
                "end must follow start, at most 366 days later",
            );
        }
        f.finish().map_err(status)?;
        let Some(owner) = owner else {
            return Err(status(AppError::field("owner", "required")));
        };
        let english = r.language() == common::Language::En;
        let text = queries::calendar(
            self.app.read_models(),
            owner,
            &actor.visibility(),
            from,
            until,
            r.include_cancelled,
            english,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::ExportCalendarResponse {
            content_type: "text/calendar; charset=utf-8".to_owned(),
            file_name: format!("lessons-{}.ics", now.date_naive().year()),
            content: text.into_bytes(),
        }))
    }

    async fn get_calendar_feed(
        &self,
        _request: Request<pb::GetCalendarFeedRequest>,
    ) -> Result<Response<pb::GetCalendarFeedResponse>, Status> {
        Err(method("GetCalendarFeed"))
    }

    async fn rotate_calendar_feed(
        &self,
        _request: Request<pb::RotateCalendarFeedRequest>,
    ) -> Result<Response<pb::RotateCalendarFeedResponse>, Status> {
        Err(method("RotateCalendarFeed"))
    }
}
