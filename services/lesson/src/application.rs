//! The lesson service's application layer: loads aggregates, decides, appends — and orchestrates
//! the steps that span streams (reserve slots in both schedules, then write the lesson).
//!
//! Booking protocol (DESIGN.md: invariants that span aggregates get their own stream):
//! 1. reserve the interval in `tutor-schedule-<tutor>` (append with expected revision);
//! 2. reserve it in `student-schedule-<student>`; if that is refused, give the tutor's
//!    reservation back (BOOKING_ABANDONED) and answer with the conflict;
//! 3. append the lesson's own event.
//!
//! Ids of new lessons and series are derived from the client's request id, so a retried request
//! lands on the same streams and every step recognises itself as done. Releasing slots after a
//! cancellation is done here at once and again by [`SlotReleaseReactor`] from the event, with the
//! same derived event ids, so a crash between the two appends cannot leave a slot held.
//!
//! [`SlotReleaseReactor`]: crate::projections::SlotReleaseReactor

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use repit_event_store::aggregate::ExecuteOptions;
use repit_event_store::{EventId, EventStore, Repository};
use repit_platform::RequestContext;
use repit_platform::auth::Caller;
use repit_projections::ReadModelDb;
use repit_proto::repit::common::v1::{Date, EventMetadata, Money};
use repit_proto::repit::lesson::v1 as pb;
use uuid::Uuid;

use crate::access::{Action, Actor};
use crate::domain::lesson::{
    CancelLesson, LessonCodec, MarkAttendance, RecordOutcome, RescheduleLesson, ScheduleLesson,
    ShiftTopic, UpdateLessonDetails, interval_of,
};
use crate::domain::local_time::{local_to_utc, to_local};
use crate::domain::recurrence::Recurrence;
use crate::domain::schedule::{ScheduleCodec, SlotRequest};
use crate::domain::series::SeriesCodec;
use crate::domain::{
    LessonAggregate, LessonCommand, LessonError, Party, ScheduleAggregate, ScheduleCommand,
    ScheduleError, SeriesAggregate, SeriesCommand, streams,
};
use crate::error::AppError;
use repit_platform::time::timestamp;

/// How many following lessons a topic shift looks at (the contract's bound).
pub const SHIFT_CHAIN_LIMIT: i64 = 50;

/// How many lesson streams a series writes at once.
const SERIES_WRITE_CONCURRENCY: usize = 16;

/// The lesson service's settings.
#[derive(Clone, Debug)]
pub struct LessonSettings {
    /// The cancellation policy applied until the tutor service keeps one per tutor.
    pub default_policy: pb::CancellationPolicy,
}

impl Default for LessonSettings {
    fn default() -> Self {
        Self {
            default_policy: pb::CancellationPolicy {
                notice_hours: 24,
                late_cancellation_fee_kind: pb::LateCancellationFeeKind::LessonPrice as i32,
                late_cancellation_fixed_fee: None,
                late_cancellation_counts_as_missed: true,
            },
        }
    }
}

/// A lesson to schedule, parsed.
#[derive(Clone, Debug)]
pub struct NewLesson {
    pub request_id: String,
    pub tutor_id: Uuid,
    pub student_id: Uuid,
    pub start: DateTime<Utc>,
    pub duration: TimeDelta,
    pub time_zone: String,
    pub subject: String,
    pub price_override: Option<Money>,
    pub planned_topic: String,
}

/// A series to create, parsed.
#[derive(Clone, Debug)]
pub struct NewSeries {
    pub request_id: String,
    pub tutor_id: Uuid,
    pub student_id: Uuid,
    pub subject: String,
    pub duration: TimeDelta,
    pub price_override: Option<Money>,
    pub recurrence: Recurrence,
    /// The rule as the client sent it, normalised, to store in the event.
    pub recurrence_pb: pb::Recurrence,
    pub skip_conflicts: bool,
}

/// What CreateSeries produced.
#[derive(Clone, Debug)]
pub struct CreatedSeries {
    pub series: pb::Series,
    pub lessons: Vec<pb::Lesson>,
    pub skipped: Vec<(NaiveDate, DateTime<Utc>, crate::domain::Conflict)>,
}

/// A "this and following" change of a series, parsed (each `Some` is in the update mask).
#[derive(Clone, Debug)]
pub struct SeriesChange {
    pub series_id: Uuid,
    pub from_lesson_id: Uuid,
    /// The new rule as sent; its start_date is replaced by the from-occurrence's date.
    pub recurrence: Option<pb::Recurrence>,
    pub duration: Option<TimeDelta>,
    pub subject: Option<String>,
    /// `Some(None)`: back to the tutor's default price.
    pub price_override: Option<Option<Money>>,
    pub skip_conflicts: bool,
    pub expected_revision: Option<u64>,
}

/// What UpdateSeries did.
#[derive(Clone, Debug)]
pub struct ChangedSeries {
    pub series: pb::Series,
    pub affected: Vec<pb::Lesson>,
    pub skipped: Vec<(NaiveDate, DateTime<Utc>, crate::domain::Conflict)>,
}

/// A cancellation asked for, parsed.
#[derive(Clone, Debug)]
pub struct Cancellation {
    pub cancelled_by: pb::CancellingParty,
    /// The caller is the student or a parent (they may not cancel after the start).
    pub by_student_side: bool,
    pub reason: String,
    pub waive_fee: bool,
    pub cause: pb::CancellationCause,
    pub expected_revision: Option<u64>,
}

/// A lesson command's result: the lesson after it.
pub type LessonResult = Result<pb::Lesson, AppError>;

/// The lesson service's use cases.
#[derive(Clone)]
pub struct LessonApplication {
    lessons: Arc<Repository<LessonAggregate, LessonCodec>>,
    schedules: Arc<Repository<ScheduleAggregate, ScheduleCodec>>,
    series: Arc<Repository<SeriesAggregate, SeriesCodec>>,
    read_models: ReadModelDb,
    settings: LessonSettings,
}

impl std::fmt::Debug for LessonApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LessonApplication")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lesson_with_revision(state: &LessonAggregate, revision: Option<u64>) -> LessonResult {
    let mut lesson = state
        .lesson
        .clone()
        .ok_or(AppError::Lesson(LessonError::NotFound))?;
    lesson.revision = revision.unwrap_or(0);
    Ok(lesson)
}

/// The id a retried request maps to: the same request id of the same tutor gives the same id.
fn derived_id(tutor_id: Uuid, kind: &str, request_id: &str) -> Uuid {
    if request_id.is_empty() {
        Uuid::now_v7()
    } else {
        Uuid::new_v5(&tutor_id, format!("{kind}/{request_id}").as_bytes())
    }
}

/// The ids of the events that release a cancelled lesson's slots: the same whether the command
/// or the reactor appends them, so the store keeps one copy.
pub fn release_ids_source(lesson_id: &str) -> EventId {
    EventId::from_uuid(Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("repit.lesson/release-on-cancel/{lesson_id}").as_bytes(),
    ))
}

impl LessonApplication {
    /// The application over an event store and the read-model database.
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: ReadModelDb,
        settings: LessonSettings,
    ) -> Self {
        Self {
            lessons: Arc::new(Repository::new(store.clone(), LessonCodec)),
            schedules: Arc::new(Repository::new(store.clone(), ScheduleCodec)),
            series: Arc::new(Repository::new(store, SeriesCodec)),
            read_models,
            settings,
        }
    }

    /// The read-model database (queries).
    pub fn read_models(&self) -> &ReadModelDb {
        &self.read_models
    }

    /// The caller as the access rules see them: for a school admin, with the tutors of their
    /// schools (from the `lesson_school_tutors` read model, so a tutor who just joined a school
    /// is in its admins' reach within moments).
    pub async fn actor(&self, caller: Caller) -> Result<Actor, AppError> {
        let schools = caller.administered_schools();
        let actor = Actor::new(caller);
        if schools.is_empty() {
            return Ok(actor);
        }
        let tutors = crate::queries::tutors_of_schools(&self.read_models, &schools).await?;
        Ok(actor.with_school_tutors(tutors))
    }

    /// Reserves `slots` for the tutor and then the student, all or nothing.
    async fn reserve(
        &self,
        tutor_id: Uuid,
        student_id: Uuid,
        slots: Vec<SlotRequest>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let tutor_stream = streams::tutor_schedule(tutor_id)?;
        let student_stream = streams::student_schedule(student_id)?;
        let reserve = |party, owner: Uuid| ScheduleCommand::Reserve {
            party,
            owner: owner.to_string(),
            slots: slots.clone(),
            actor: String::new(),
            now,
        };
        let (tutor_command, student_command) = (
            reserve(Party::Tutor, tutor_id),
            reserve(Party::Student, student_id),
        );
        let options = event_options(None);
        // Both schedules at once: each is its own consistency boundary, so the order does not
        // matter for correctness, and one round trip is saved per booking.
        let (tutor, student) = tokio::join!(
            self.schedules
                .execute_with(&tutor_stream, &tutor_command, &options),
            self.schedules
                .execute_with(&student_stream, &student_command, &options),
        );
        match (tutor, student) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(error), Err(_)) => Err(error.into()),
            (Ok(done), Err(error)) => {
                self.undo_reservation(Party::Tutor, tutor_id, &tutor_stream, &done.events, now)
                    .await;
                Err(error.into())
            }
            (Err(error), Ok(done)) => {
                self.undo_reservation(
                    Party::Student,
                    student_id,
                    &student_stream,
                    &done.events,
                    now,
                )
                .await;
                Err(error.into())
            }
        }
    }

    /// Compensates a reservation the other party's schedule refused: moved slots go back to
    /// their old intervals, new ones are released (BOOKING_ABANDONED).
    async fn undo_reservation(
        &self,
        party: Party,
        owner: Uuid,
        stream: &repit_event_store::StreamName,
        events: &[crate::domain::ScheduleEvent],
        now: DateTime<Utc>,
    ) {
        use crate::domain::ScheduleEvent as E;
        let mut moved_back = Vec::new();
        let mut released = Vec::new();
        let bounds = |range: Option<repit_proto::repit::common::v1::TimeRange>| {
            let range = range.unwrap_or_default();
            (
                repit_platform::time::from_timestamp(range.start.as_ref()),
                repit_platform::time::from_timestamp(range.end.as_ref()),
            )
        };
        for event in events {
            match event {
                E::TutorReleased(e) => moved_back.push((e.lesson_id.clone(), bounds(e.time_range))),
                E::StudentReleased(e) => {
                    moved_back.push((e.lesson_id.clone(), bounds(e.time_range)))
                }
                E::TutorReserved(e) => released.push((
                    e.lesson_id.clone(),
                    e.student_id.clone(),
                    e.tutor_id.clone(),
                    e.series_id.clone(),
                )),
                E::StudentReserved(e) => released.push((
                    e.lesson_id.clone(),
                    e.student_id.clone(),
                    e.tutor_id.clone(),
                    e.series_id.clone(),
                )),
                E::TutorFeedRotated(_) | E::StudentFeedRotated(_) => {}
            }
        }
        let mut commands = Vec::new();
        let (fresh, restore): (Vec<_>, Vec<_>) = released
            .into_iter()
            .partition(|(id, ..)| !moved_back.iter().any(|(moved, _)| moved == id));
        if !restore.is_empty() {
            commands.push(ScheduleCommand::Reserve {
                party,
                owner: owner.to_string(),
                slots: restore
                    .iter()
                    .filter_map(|(lesson_id, student_id, tutor_id, series_id)| {
                        let (_, (start, end)) =
                            moved_back.iter().find(|(id, _)| id == lesson_id)?;
                        Some(SlotRequest {
                            lesson_id: lesson_id.clone(),
                            tutor_id: if party == Party::Tutor {
                                owner.to_string()
                            } else {
                                tutor_id.clone()
                            },
                            student_id: if party == Party::Student {
                                owner.to_string()
                            } else {
                                student_id.clone()
                            },
                            series_id: series_id.clone(),
                            start: *start,
                            end: *end,
                        })
                    })
                    .collect(),
                actor: String::new(),
                now,
            });
        }
        if !fresh.is_empty() {
            commands.push(ScheduleCommand::Release {
                party,
                owner: owner.to_string(),
                lesson_ids: fresh.into_iter().map(|(id, ..)| id).collect(),
                reason: pb::SlotReleaseReason::BookingAbandoned,
                actor: String::new(),
                now,
            });
        }
        for command in commands {
            if let Err(error) = self
                .schedules
                .execute_with(stream, &command, &event_options(None))
                .await
            {
                tracing::error!(%owner, %error, "failed to undo a reservation the other party refused");
            }
        }
    }

    /// Gives back the slots of a cancelled lesson in both schedules. Idempotent: event ids are
    /// derived from the lesson, so the reactor doing it again writes nothing.
    pub async fn release_cancelled(
        &self,
        lesson_id: &str,
        tutor_id: &str,
        student_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let parse = |id: &str| Uuid::parse_str(id).map_err(|e| AppError::Internal(e.to_string()));
        for (party, owner, stream) in [
            (
                Party::Tutor,
                tutor_id,
                streams::tutor_schedule(parse(tutor_id)?)?,
            ),
            (
                Party::Student,
                student_id,
                streams::student_schedule(parse(student_id)?)?,
            ),
        ] {
            let options = ExecuteOptions {
                id_source: Some(EventId::derived(release_ids_source(lesson_id), owner)),
                ..event_options(None)
            };
            let command = ScheduleCommand::Release {
                party,
                owner: owner.to_owned(),
                lesson_ids: vec![lesson_id.to_owned()],
                reason: pb::SlotReleaseReason::LessonCancelled,
                actor: String::new(),
                now,
            };
            match self
                .schedules
                .execute_with(&stream, &command, &options)
                .await
            {
                Ok(_) => {}
                // The command already released it with these very ids.
                Err(repit_event_store::RepositoryError::Store(
                    repit_event_store::Error::IdempotencyConflict { .. },
                )) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// ScheduleLesson.
    pub async fn schedule_lesson(&self, new: NewLesson) -> Result<pb::Lesson, AppError> {
        let now = Utc::now();
        let lesson_id = derived_id(new.tutor_id, "lesson", &new.request_id);
        let stream = streams::lesson(lesson_id)?;
        // Only a request id can name an existing lesson (a retry); a fresh id cannot.
        let fresh_id = new.request_id.is_empty();
        if !fresh_id {
            let existing = self.lessons.load(&stream).await?;
            if existing.state.lesson.is_some() {
                if existing.state.request_id == new.request_id {
                    return lesson_with_revision(&existing.state, existing.revision);
                }
                return Err(AppError::Lesson(LessonError::AlreadyExists));
            }
        }
        let slot = SlotRequest {
            lesson_id: lesson_id.to_string(),
            tutor_id: new.tutor_id.to_string(),
            student_id: new.student_id.to_string(),
            series_id: String::new(),
            start: new.start,
            end: new.start + new.duration,
        };
        self.reserve(new.tutor_id, new.student_id, vec![slot], now)
            .await?;
        let command = LessonCommand::Schedule(Box::new(ScheduleLesson {
            lesson_id: lesson_id.to_string(),
            tutor_id: new.tutor_id.to_string(),
            student_id: new.student_id.to_string(),
            series_id: String::new(),
            start: new.start,
            duration: new.duration,
            time_zone: new.time_zone,
            subject: new.subject,
            price_override: new.price_override,
            planned_topic: new.planned_topic,
            request_id: new.request_id,
            actor: String::new(),
            now,
        }));
        let options = ExecuteOptions {
            // A lesson id made fresh for this call names no stream yet.
            assume_new: fresh_id,
            ..event_options(None)
        };
        let executed = self
            .lessons
            .execute_with(&stream, &command, &options)
            .await?;
        lesson_with_revision(&executed.state, executed.revision)
    }

    async fn run(
        &self,
        lesson_id: Uuid,
        command: LessonCommand,
        expected_revision: Option<u64>,
    ) -> Result<(LessonAggregate, Option<u64>), AppError> {
        let executed = self.execute(lesson_id, command, expected_revision).await?;
        Ok((executed.state, executed.revision))
    }

    /// Like [`Self::run`], with the events the command appended.
    async fn execute(
        &self,
        lesson_id: Uuid,
        command: LessonCommand,
        expected_revision: Option<u64>,
    ) -> Result<repit_event_store::aggregate::Executed<LessonAggregate>, AppError> {
        let stream = streams::lesson(lesson_id)?;
        let options = event_options(expected_revision);
        let executed = self
            .lessons
            .execute_with(&stream, &command, &options)
            .await
            .map_err(|e| match e {
                repit_event_store::RepositoryError::Domain(LessonError::NotFound) => {
                    AppError::NotFound {
                        kind: "lesson",
                        id: lesson_id.to_string(),
                    }
                }
                other => other.into(),
            })?;
        Ok(executed)
    }

    async fn load_lesson(
        &self,
        lesson_id: Uuid,
    ) -> Result<(LessonAggregate, Option<u64>), AppError> {
        let loaded = self.lessons.load(&streams::lesson(lesson_id)?).await?;
        if loaded.state.lesson.is_none() {
            return Err(AppError::NotFound {
                kind: "lesson",
                id: lesson_id.to_string(),
            });
        }
        Ok((loaded.state, loaded.revision))
    }

    /// Loads the lesson and checks that `actor` may do `action` to it (NOT_FOUND when they may
    /// not see it). A lesson's tutor and student never change, so the check holds for the
    /// command that follows.
    async fn authorize(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        action: Action,
    ) -> Result<(LessonAggregate, Option<u64>), AppError> {
        let (state, revision) = self.load_lesson(lesson_id).await?;
        let lesson = state
            .lesson
            .as_ref()
            .ok_or(AppError::Lesson(LessonError::NotFound))?;
        actor.check(
            action,
            &lesson.tutor_id,
            &lesson.student_id,
            "lesson",
            &lesson_id.to_string(),
        )?;
        Ok((state, revision))
    }

    /// RescheduleLesson: reserve the new interval (moving the reservation), then record the move.
    #[allow(clippy::too_many_arguments)] // the caller, the lesson, and the request's fields
    pub async fn reschedule_lesson(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        start: DateTime<Utc>,
        duration: Option<TimeDelta>,
        time_zone: Option<String>,
        reason: String,
        expected_revision: Option<u64>,
    ) -> LessonResult {
        let now = Utc::now();
        let (state, revision) = self.authorize(actor, lesson_id, Action::Manage).await?;
        if let Some(expected) = expected_revision
            && revision != Some(expected)
        {
            return Err(AppError::Aborted(format!(
                "expected revision {expected}, the lesson is at {}; reload and retry",
                revision.unwrap_or(0)
            )));
        }
        let lesson = state
            .lesson
            .clone()
            .ok_or(AppError::Lesson(LessonError::NotFound))?;
        let command = LessonCommand::Reschedule(RescheduleLesson {
            start,
            duration: duration.unwrap_or_else(|| {
                let (s, e) = interval_of(&lesson);
                e - s
            }),
            time_zone: time_zone.unwrap_or_else(|| lesson.time_zone.clone()),
            reason,
            by_series_edit: false,
            actor: String::new(),
            now,
        });
        // Refuse early (cancelled, held) before touching the schedules.
        use repit_event_store::Aggregate;
        let events = state.decide(&command).map_err(AppError::Lesson)?;
        if events.is_empty() {
            return lesson_with_revision(&state, revision);
        }
        let LessonCommand::Reschedule(move_to) = &command else {
            return Err(AppError::Internal("reschedule command expected".into()));
        };
        let tutor_id = parse_stored(&lesson.tutor_id)?;
        let student_id = parse_stored(&lesson.student_id)?;
        let (old_start, old_end) = interval_of(&lesson);
        let slot = |start: DateTime<Utc>, end: DateTime<Utc>| SlotRequest {
            lesson_id: lesson.lesson_id.clone(),
            tutor_id: lesson.tutor_id.clone(),
            student_id: lesson.student_id.clone(),
            series_id: lesson.series_id.clone(),
            start,
            end,
        };
        self.reserve(
            tutor_id,
            student_id,
            vec![slot(move_to.start, move_to.start + move_to.duration)],
            now,
        )
        .await?;
        match self.run(lesson_id, command.clone(), revision).await {
            Ok((state, revision)) => {
                if !lesson.series_id.is_empty() {
                    self.record_occurrence_edit(&state, now).await;
                }
                lesson_with_revision(&state, revision)
            }
            Err(error) => {
                // The lesson changed meanwhile: put its reservation back where it was.
                if let Err(undo) = self
                    .reserve(tutor_id, student_id, vec![slot(old_start, old_end)], now)
                    .await
                {
                    tracing::error!(%lesson_id, error = %undo, "failed to restore a reservation");
                }
                Err(error)
            }
        }
    }

    async fn record_occurrence_edit(&self, state: &LessonAggregate, now: DateTime<Utc>) {
        let Some(lesson) = &state.lesson else { return };
        let Ok(series_id) = Uuid::parse_str(&lesson.series_id) else {
            return;
        };
        let Ok(zone) = crate::domain::local_time::parse_zone(&lesson.time_zone) else {
            return;
        };
        let original = repit_platform::time::from_timestamp(lesson.original_start_time.as_ref());
        let local = to_local(zone, original).date();
        let edit = pb::SeriesOccurrenceEdited {
            series_id: lesson.series_id.clone(),
            lesson_id: lesson.lesson_id.clone(),
            local_date: Some(date_pb(local)),
            start_time: lesson.start_time,
            duration: lesson.duration,
            subject: lesson.subject.clone(),
            price_override: lesson.price_override.clone(),
            time_changed: lesson.start_time != lesson.original_start_time,
            actor_user_id: String::new(),
            occurred_at: Some(timestamp(now)),
        };
        let Ok(stream) = streams::series(series_id) else {
            return;
        };
        if let Err(error) = self
            .series
            .execute_with(
                &stream,
                &SeriesCommand::RecordOccurrenceEdit(Box::new(edit)),
                &event_options(None),
            )
            .await
        {
            tracing::warn!(%series_id, %error, "failed to record an occurrence edit on its series");
        }
    }

    /// UpdateLesson.
    pub async fn update_lesson(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        update: UpdateLessonDetails,
        expected_revision: Option<u64>,
    ) -> LessonResult {
        self.authorize(actor, lesson_id, Action::Manage).await?;
        let now = update.now;
        let (state, revision) = self
            .run(
                lesson_id,
                LessonCommand::UpdateDetails(update),
                expected_revision,
            )
            .await?;
        if state
            .lesson
            .as_ref()
            .is_some_and(|l| !l.series_id.is_empty())
        {
            self.record_occurrence_edit(&state, now).await;
        }
        lesson_with_revision(&state, revision)
    }

    /// CancelLesson: record the cancellation, then give the slots back.
    ///
    /// The caller's side decides an unspecified `cancelled_by`: the tutor's side (the tutor, an
    /// admin) cancels as TUTOR, the student's side (the student, a parent) as STUDENT. The
    /// student's side may not name TUTOR nor waive the fee.
    pub async fn cancel_lesson(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        request: Cancellation,
    ) -> LessonResult {
        let now = Utc::now();
        let (state, _) = self.authorize(actor, lesson_id, Action::Cancel).await?;
        let tutor_side = state
            .lesson
            .as_ref()
            .is_some_and(|lesson| actor.manages(&lesson.tutor_id));
        let cancelled_by = match (request.cancelled_by, tutor_side) {
            (pb::CancellingParty::Unspecified, true) => pb::CancellingParty::Tutor,
            (pb::CancellingParty::Unspecified, false) => pb::CancellingParty::Student,
            (pb::CancellingParty::Tutor, false) => {
                return Err(AppError::Forbidden(
                    "a student or parent cannot cancel on the tutor's behalf",
                ));
            }
            (party, _) => party,
        };
        if request.waive_fee && !tutor_side {
            return Err(AppError::Forbidden(
                "only the tutor's side may waive the fee",
            ));
        }
        let command = LessonCommand::Cancel(CancelLesson {
            cancelled_by,
            by_student_side: request.by_student_side || !tutor_side,
            reason: request.reason,
            cause: request.cause,
            waive_fee: request.waive_fee,
            policy: self.settings.default_policy.clone(),
            actor: String::new(),
            now,
        });
        let (state, revision) = self
            .run(lesson_id, command, request.expected_revision)
            .await?;
        if let Some(lesson) = &state.lesson {
            // The reactor does this too; doing it now frees the slot for the very next booking.
            if let Err(error) = self
                .release_cancelled(&lesson.lesson_id, &lesson.tutor_id, &lesson.student_id, now)
                .await
            {
                tracing::warn!(%lesson_id, %error, "releasing slots failed; the reactor will retry");
            }
        }
        lesson_with_revision(&state, revision)
    }

    /// MarkAttendance. Returns the lesson and whether an outcome was withdrawn.
    pub async fn mark_attendance(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        attendance: pb::Attendance,
        note: String,
        expected_revision: Option<u64>,
    ) -> Result<(pb::Lesson, bool), AppError> {
        self.authorize(actor, lesson_id, Action::Manage).await?;
        let command = LessonCommand::MarkAttendance(MarkAttendance {
            attendance,
            note,
            actor: String::new(),
            now: Utc::now(),
        });
        let executed = self.execute(lesson_id, command, expected_revision).await?;
        // The event says whether the mark withdrew an outcome: no second read needed.
        let withdrawn = executed.events.iter().any(|event| {
            matches!(event, crate::domain::LessonEvent::AttendanceMarked(e) if e.outcome_withdrawn)
        });
        Ok((
            lesson_with_revision(&executed.state, executed.revision)?,
            withdrawn,
        ))
    }

    /// RecordLessonOutcome.
    pub async fn record_outcome(
        &self,
        actor: &Actor,
        lesson_id: Uuid,
        outcome: RecordOutcome,
        expected_revision: Option<u64>,
    ) -> LessonResult {
        self.authorize(actor, lesson_id, Action::Manage).await?;
        let (state, revision) = self
            .run(
                lesson_id,
                LessonCommand::RecordOutcome(outcome),
                expected_revision,
            )
            .await?;
        lesson_with_revision(&state, revision)
    }

    /// ShiftPlannedTopics: the source lesson's planned topic moves to the next scheduled lesson
    /// of the same tutor, student and subject, whose own topic moves on, until a lesson without a
    /// planned topic absorbs the chain (at most [`SHIFT_CHAIN_LIMIT`] lessons are looked at).
    ///
    /// Every step is keyed by a shift id derived from the request id, so a retry walks the same
    /// chain, recognises the steps already done, and answers the same.
    pub async fn shift_planned_topics(
        &self,
        actor: &Actor,
        source_id: Uuid,
        request_id: &str,
        expected_revision: Option<u64>,
    ) -> Result<(Vec<pb::TopicShift>, String), AppError> {
        let now = Utc::now();
        let shift_id =
            Uuid::new_v5(&source_id, format!("shift/{request_id}").as_bytes()).to_string();
        let (source, _) = self.authorize(actor, source_id, Action::Manage).await?;
        let source_lesson = source
            .lesson
            .clone()
            .ok_or(AppError::Lesson(LessonError::NotFound))?;
        let step = |from: &str, topic: &str| {
            LessonCommand::ShiftTopic(ShiftTopic {
                shift_id: shift_id.clone(),
                source_lesson_id: source_id.to_string(),
                from_lesson_id: from.to_owned(),
                topic: topic.to_owned(),
                actor: String::new(),
                now,
            })
        };
        let (state, revision) = self.run(source_id, step("", ""), expected_revision).await?;
        let mut carry = state
            .last_shift
            .as_ref()
            .map(|(_, previous)| previous.clone())
            .unwrap_or_default();
        let mut shifts = vec![pb::TopicShift {
            lesson_id: source_lesson.lesson_id.clone(),
            previous_planned_topic: carry.clone(),
            planned_topic: String::new(),
            revision: revision.unwrap_or(0),
        }];
        let (start, _) = interval_of(&source_lesson);
        let following = crate::queries::following_lessons(
            &self.read_models,
            &source_lesson,
            start,
            SHIFT_CHAIN_LIMIT,
        )
        .await?;
        let mut from = source_lesson.lesson_id.clone();
        for next in following {
            if carry.is_empty() {
                break;
            }
            let (state, revision) = match self.run(next, step(&from, &carry), None).await {
                Ok(done) => done,
                // Cancelled or held since the read model saw it: not part of the chain.
                Err(AppError::Lesson(_)) => continue,
                Err(other) => return Err(other),
            };
            let Some(lesson) = &state.lesson else {
                continue;
            };
            let previous = state
                .last_shift
                .as_ref()
                .map(|(_, previous)| previous.clone())
                .unwrap_or_default();
            shifts.push(pb::TopicShift {
                lesson_id: lesson.lesson_id.clone(),
                previous_planned_topic: previous.clone(),
                planned_topic: lesson.planned_topic.clone(),
                revision: revision.unwrap_or(0),
            });
            from.clone_from(&lesson.lesson_id);
            carry = previous;
        }
        Ok((shifts, carry))
    }

    /// CreateSeries: expand the rule, reserve every occurrence (or the free ones), schedule
    /// each as a lesson, then record the series.
    pub async fn create_series(&self, new: NewSeries) -> Result<CreatedSeries, AppError> {
        let now = Utc::now();
        let series_id = derived_id(new.tutor_id, "series", &new.request_id);
        let series_stream = streams::series(series_id)?;
        let existing = self.series.load(&series_stream).await?;
        if existing.state.series.is_some() {
            if new.request_id.is_empty() || existing.state.request_id != new.request_id {
                return Err(AppError::Series(crate::domain::SeriesError::AlreadyExists));
            }
            return self
                .series_answer(series_id, existing.state, existing.revision, vec![])
                .await;
        }
        let occurrences = new.recurrence.occurrences();
        let slots: Vec<(NaiveDate, SlotRequest)> = occurrences
            .iter()
            .map(|o| {
                let lesson_id = Uuid::new_v5(
                    &series_id,
                    format!("occurrence/{}", o.start.timestamp()).as_bytes(),
                );
                (
                    o.local_date,
                    SlotRequest {
                        lesson_id: lesson_id.to_string(),
                        tutor_id: new.tutor_id.to_string(),
                        student_id: new.student_id.to_string(),
                        series_id: series_id.to_string(),
                        start: o.start,
                        end: o.start + new.duration,
                    },
                )
            })
            .collect();
        let (free, skipped) = if new.skip_conflicts {
            self.plan_free_slots(new.tutor_id, new.student_id, slots, now)
                .await?
        } else {
            (slots, vec![])
        };
        if free.is_empty() {
            return Err(match skipped.into_iter().next() {
                Some((_, _, conflict)) => AppError::DoubleBooked(Box::new(conflict)),
                None => AppError::field("recurrence", "the rule yields no occurrence"),
            });
        }
        self.reserve(
            new.tutor_id,
            new.student_id,
            free.iter().map(|(_, s)| s.clone()).collect(),
            now,
        )
        .await?;
        let lessons: Vec<pb::Lesson> = futures::stream::iter(free.iter().cloned())
            .map(|(_, slot)| {
                let new = new.clone();
                async move {
                    let lesson_id = Uuid::parse_str(&slot.lesson_id)
                        .map_err(|e| AppError::Internal(e.to_string()))?;
                    let command = LessonCommand::Schedule(Box::new(ScheduleLesson {
                        lesson_id: slot.lesson_id.clone(),
                        tutor_id: slot.tutor_id.clone(),
                        student_id: slot.student_id.clone(),
                        series_id: slot.series_id.clone(),
                        start: slot.start,
                        duration: new.duration,
                        time_zone: new.recurrence_pb.time_zone.clone(),
                        subject: new.subject.clone(),
                        price_override: new.price_override.clone(),
                        planned_topic: String::new(),
                        request_id: format!("series/{series_id}"),
                        actor: String::new(),
                        now,
                    }));
                    // Occurrence ids are new unless this is a retry, which the fallback handles.
                    let options = ExecuteOptions {
                        assume_new: true,
                        ..event_options(None)
                    };
                    let executed = self
                        .lessons
                        .execute_with(&streams::lesson(lesson_id)?, &command, &options)
                        .await?;
                    lesson_with_revision(&executed.state, executed.revision)
                }
            })
            .buffered(SERIES_WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        let created = pb::SeriesCreated {
            series_id: series_id.to_string(),
            tutor_id: new.tutor_id.to_string(),
            student_id: new.student_id.to_string(),
            subject: new.subject.clone(),
            duration: Some(repit_platform::time::duration(new.duration)),
            price_override: new.price_override.clone(),
            recurrence: Some(new.recurrence_pb.clone()),
            occurrences: free
                .iter()
                .map(|(date, slot)| pb::SeriesOccurrence {
                    lesson_id: slot.lesson_id.clone(),
                    local_date: Some(date_pb(*date)),
                    start_time: Some(timestamp(slot.start)),
                })
                .collect(),
            skipped_dates: skipped.iter().map(|(d, _, _)| date_pb(*d)).collect(),
            request_id: new.request_id.clone(),
            actor_user_id: String::new(),
            occurred_at: Some(timestamp(now)),
        };
        let executed = self
            .series
            .execute_with(
                &series_stream,
                &SeriesCommand::Create(Box::new(created)),
                &event_options(None),
            )
            .await?;
        let mut answer = self
            .series_answer(series_id, executed.state, executed.revision, skipped)
            .await?;
        answer.lessons = lessons;
        Ok(answer)
    }

    async fn series_answer(
        &self,
        series_id: Uuid,
        state: SeriesAggregate,
        revision: Option<u64>,
        skipped: Vec<(NaiveDate, DateTime<Utc>, crate::domain::Conflict)>,
    ) -> Result<CreatedSeries, AppError> {
        let mut series = state.series.clone().ok_or(AppError::NotFound {
            kind: "series",
            id: series_id.to_string(),
        })?;
        series.revision = revision.unwrap_or(0);
        let mut lessons = Vec::with_capacity(state.occurrences.len());
        for occurrence in &state.occurrences {
            let id = parse_stored(&occurrence.lesson_id)?;
            let (lesson, revision) = self.load_lesson(id).await?;
            lessons.push(lesson_with_revision(&lesson, revision)?);
        }
        Ok(CreatedSeries {
            series,
            lessons,
            skipped,
        })
    }

    /// Which of `slots` are free in both schedules right now (and with each other).
    async fn plan_free_slots(
        &self,
        tutor_id: Uuid,
        student_id: Uuid,
        slots: Vec<(NaiveDate, SlotRequest)>,
        now: DateTime<Utc>,
    ) -> Result<
        (
            Vec<(NaiveDate, SlotRequest)>,
            Vec<(NaiveDate, DateTime<Utc>, crate::domain::Conflict)>,
        ),
        AppError,
    > {
        use repit_event_store::Aggregate;
        let mut tutor = self
            .schedules
            .load(&streams::tutor_schedule(tutor_id)?)
            .await?
            .state;
        let mut student = self
            .schedules
            .load(&streams::student_schedule(student_id)?)
            .await?
            .state;
        let mut free = Vec::new();
        let mut skipped = Vec::new();
        for (date, slot) in slots {
            let try_reserve = |state: &ScheduleAggregate, party, owner: Uuid| {
                state.decide(&ScheduleCommand::Reserve {
                    party,
                    owner: owner.to_string(),
                    slots: vec![slot.clone()],
                    actor: String::new(),
                    now,
                })
            };
            match (
                try_reserve(&tutor, Party::Tutor, tutor_id),
                try_reserve(&student, Party::Student, student_id),
            ) {
                (Ok(tutor_events), Ok(student_events)) => {
                    tutor_events.iter().for_each(|e| tutor.evolve(e));
                    student_events.iter().for_each(|e| student.evolve(e));
                    free.push((date, slot));
                }
                (Err(ScheduleError::Conflict(conflict)), _)
                | (_, Err(ScheduleError::Conflict(conflict))) => {
                    skipped.push((date, slot.start, *conflict));
                }
            }
        }
        Ok((free, skipped))
    }

    /// A series that exists, is at the client's expected revision (when given) and has not
    /// ended — what every change of a series starts from.
    /// The series, if `actor` may manage it and it is active (and at `expected_revision`).
    async fn load_active_series(
        &self,
        actor: &Actor,
        stream: &repit_event_store::StreamName,
        series_id: Uuid,
        expected_revision: Option<u64>,
    ) -> Result<
        (
            repit_event_store::aggregate::Loaded<SeriesAggregate>,
            pb::Series,
        ),
        AppError,
    > {
        let loaded = self.series.load(stream).await?;
        let Some(series) = loaded.state.series.clone() else {
            return Err(AppError::NotFound {
                kind: "series",
                id: series_id.to_string(),
            });
        };
        actor.check(
            Action::Manage,
            &series.tutor_id,
            &series.student_id,
            "series",
            &series_id.to_string(),
        )?;
        if let Some(expected) = expected_revision
            && loaded.revision != Some(expected)
        {
            return Err(AppError::Aborted(format!(
                "expected revision {expected}, the series is at {}; reload and retry",
                loaded.revision.unwrap_or(0)
            )));
        }
        if series.state() == pb::SeriesState::Ended {
            return Err(AppError::Series(crate::domain::SeriesError::AlreadyEnded));
        }
        Ok((loaded, series))
    }

    /// UpdateSeries ("this and following"): from the given occurrence on, SCHEDULED future
    /// occurrences follow the new rule — moved, added or cancelled to match, paired in time
    /// order — and take the new duration, subject and price. Held and cancelled occurrences are
    /// left alone; occurrences moved by hand keep their time but take the rest.
    /// All slot changes are reserved in one append per schedule, so the change is refused as a
    /// whole on a double booking unless `skip_conflicts` leaves the conflicting dates out.
    pub async fn update_series(
        &self,
        actor: &Actor,
        change: SeriesChange,
    ) -> Result<ChangedSeries, AppError> {
        use std::collections::HashMap;
        let now = Utc::now();
        let stream = streams::series(change.series_id)?;
        let (loaded, series) = self
            .load_active_series(actor, &stream, change.series_id, change.expected_revision)
            .await?;
        let from_id = change.from_lesson_id.to_string();
        let not_an_occurrence = || {
            AppError::Lesson(LessonError::NotScheduled(
                "not a scheduled future occurrence of this series",
            ))
        };
        let from_occurrence = loaded
            .state
            .occurrences
            .iter()
            .find(|o| o.lesson_id == from_id)
            .ok_or_else(not_an_occurrence)?;
        let mut fields = crate::convert::Fields::new();
        let from_date = fields
            .date("from_lesson_id", from_occurrence.local_date.as_ref())
            .ok_or_else(not_an_occurrence)?;

        // The occurrences from the from-date on, with their lessons.
        let mut following = Vec::new();
        for occurrence in &loaded.state.occurrences {
            let Some(date) = fields.date("occurrence", occurrence.local_date.as_ref()) else {
                continue;
            };
            if date < from_date {
                continue;
            }
            let (lesson, revision) = self
                .load_lesson(parse_stored(&occurrence.lesson_id)?)
                .await?;
            let Some(current) = lesson.lesson else {
                continue;
            };
            let (start, _) = interval_of(&current);
            let editable = current.state() == pb::LessonState::Scheduled && start > now;
            following.push((date, current, revision, editable));
        }
        if !following
            .iter()
            .any(|(_, l, _, editable)| l.lesson_id == from_id && *editable)
        {
            return Err(not_an_occurrence());
        }

        let duration = change
            .duration
            .unwrap_or_else(|| repit_platform::time::from_duration(series.duration.as_ref()));
        let subject = change
            .subject
            .clone()
            .unwrap_or_else(|| series.subject.clone());
        let price = change
            .price_override
            .clone()
            .unwrap_or_else(|| series.price_override.clone());
        // The new rule from the from-date, or the current times when the rule is unchanged.
        let (rule_pb, wanted): (Option<pb::Recurrence>, Vec<(NaiveDate, DateTime<Utc>)>) =
            match &change.recurrence {
                Some(rule) => {
                    let mut rule = rule.clone();
                    rule.start_date = Some(date_pb(from_date));
                    let parsed = fields.recurrence(Some(&rule));
                    fields.finish()?;
                    let Some((parsed, normalised)) = parsed else {
                        return Err(AppError::field("recurrence", "invalid"));
                    };
                    let wanted = parsed
                        .occurrences()
                        .iter()
                        .map(|o| (o.local_date, o.start))
                        .collect();
                    (Some(normalised), wanted)
                }
                None => (
                    series.recurrence.clone(),
                    following
                        .iter()
                        .filter(|(_, _, _, editable)| *editable)
                        .map(|(date, lesson, _, _)| (*date, interval_of(lesson).0))
                        .collect(),
                ),
            };

        // Pair the editable occurrences with the new rule's, both in time order: the k-th
        // remaining lesson becomes the rule's k-th occurrence (moved if need be); extra lessons
        // are cancelled, extra occurrences added. Held and cancelled lessons stay as they are.
        let editable: Vec<usize> = following
            .iter()
            .enumerate()
            .filter(|(_, (_, _, _, editable))| *editable)
            .map(|(index, _)| index)
            .collect();
        let kept: Vec<(usize, DateTime<Utc>)> = editable
            .iter()
            .zip(&wanted)
            .map(|(index, (_, start))| (*index, *start))
            .collect();
        let added: Vec<(NaiveDate, DateTime<Utc>)> =
            wanted.iter().skip(editable.len()).copied().collect();
        let removed: Vec<usize> = editable.iter().skip(wanted.len()).copied().collect();

        // Reserve every new or moved interval, all at once.
        let tutor_id = parse_stored(&series.tutor_id)?;
        let student_id = parse_stored(&series.student_id)?;
        let mut slots: Vec<(NaiveDate, SlotRequest)> = Vec::new();
        let mut targets: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
        for (index, start) in &kept {
            let (date, lesson, _, _) = &following[*index];
            let start = if loaded.state.moved.contains(&lesson.lesson_id) {
                interval_of(lesson).0
            } else {
                *start
            };
            targets.insert(lesson.lesson_id.clone(), (start, start + duration));
            slots.push((
                *date,
                SlotRequest {
                    lesson_id: lesson.lesson_id.clone(),
                    tutor_id: series.tutor_id.clone(),
                    student_id: series.student_id.clone(),
                    series_id: series.series_id.clone(),
                    start,
                    end: start + duration,
                },
            ));
        }
        for (date, start) in &added {
            let lesson_id = Uuid::new_v5(
                &change.series_id,
                format!("occurrence/{}", start.timestamp()).as_bytes(),
            );
            slots.push((
                *date,
                SlotRequest {
                    lesson_id: lesson_id.to_string(),
                    tutor_id: series.tutor_id.clone(),
                    student_id: series.student_id.clone(),
                    series_id: series.series_id.clone(),
                    start: *start,
                    end: *start + duration,
                },
            ));
        }
        let (free, skipped) = if change.skip_conflicts {
            self.plan_free_slots(tutor_id, student_id, slots, now)
                .await?
        } else {
            (slots, vec![])
        };
        self.reserve(
            tutor_id,
            student_id,
            free.iter().map(|(_, s)| s.clone()).collect(),
            now,
        )
        .await?;
        let free_ids: std::collections::HashSet<String> =
            free.iter().map(|(_, s)| s.lesson_id.clone()).collect();

        let mut affected = Vec::new();
        let mut kept_pb = Vec::new();
        let mut added_pb = Vec::new();
        for (index, _) in &kept {
            let (date, lesson, _, _) = &following[*index];
            let lesson_id = parse_stored(&lesson.lesson_id)?;
            if let Some((start, end)) = targets
                .get(&lesson.lesson_id)
                .filter(|_| free_ids.contains(&lesson.lesson_id))
            {
                let command = LessonCommand::Reschedule(RescheduleLesson {
                    start: *start,
                    duration: *end - *start,
                    time_zone: lesson.time_zone.clone(),
                    reason: String::new(),
                    by_series_edit: true,
                    actor: String::new(),
                    now,
                });
                self.run(lesson_id, command, None).await?;
            }
            let details = LessonCommand::UpdateDetails(UpdateLessonDetails {
                subject: Some(subject.clone()),
                price_override: Some(price.clone()),
                planned_topic: None,
                by_series_edit: true,
                actor: String::new(),
                now,
            });
            let (state, revision) = self.run(lesson_id, details, None).await?;
            let changed = lesson_with_revision(&state, revision)?;
            kept_pb.push(pb::SeriesOccurrence {
                lesson_id: changed.lesson_id.clone(),
                local_date: Some(date_pb(*date)),
                start_time: changed.start_time,
            });
            if changed.start_time != lesson.start_time
                || changed.duration != lesson.duration
                || changed.subject != lesson.subject
                || changed.price_override != lesson.price_override
            {
                affected.push(changed);
            }
        }
        for (date, slot) in free.iter().filter(|(_, s)| {
            !following
                .iter()
                .any(|(_, l, _, _)| l.lesson_id == s.lesson_id)
        }) {
            let command = LessonCommand::Schedule(Box::new(ScheduleLesson {
                lesson_id: slot.lesson_id.clone(),
                tutor_id: slot.tutor_id.clone(),
                student_id: slot.student_id.clone(),
                series_id: slot.series_id.clone(),
                start: slot.start,
                duration,
                time_zone: rule_pb
                    .as_ref()
                    .map_or_else(String::new, |r| r.time_zone.clone()),
                subject: subject.clone(),
                price_override: price.clone(),
                planned_topic: String::new(),
                request_id: format!("series/{}", series.series_id),
                actor: String::new(),
                now,
            }));
            let (state, revision) = self
                .run(parse_stored(&slot.lesson_id)?, command, None)
                .await?;
            let lesson = lesson_with_revision(&state, revision)?;
            added_pb.push(pb::SeriesOccurrence {
                lesson_id: lesson.lesson_id.clone(),
                local_date: Some(date_pb(*date)),
                start_time: lesson.start_time,
            });
            affected.push(lesson);
        }
        let mut removed_ids = Vec::new();
        for index in &removed {
            let lesson = &following[*index].1;
            let cancellation = Cancellation {
                cancelled_by: pb::CancellingParty::Tutor,
                by_student_side: false,
                reason: "series changed".to_owned(),
                waive_fee: false,
                cause: pb::CancellationCause::SeriesEdited,
                expected_revision: None,
            };
            match self
                .cancel_lesson(actor, parse_stored(&lesson.lesson_id)?, cancellation)
                .await
            {
                Ok(cancelled) => {
                    removed_ids.push(cancelled.lesson_id.clone());
                    affected.push(cancelled);
                }
                Err(AppError::Lesson(_)) => {}
                Err(other) => return Err(other),
            }
        }
        affected.sort_by_key(|l| l.start_time.map_or((0, 0), |t| (t.seconds, t.nanos)));

        let edit = pb::SeriesEditedFromOccurrence {
            series_id: series.series_id.clone(),
            tutor_id: series.tutor_id.clone(),
            student_id: series.student_id.clone(),
            from_lesson_id: from_id,
            from_date: Some(date_pb(from_date)),
            recurrence: rule_pb,
            duration: Some(repit_platform::time::duration(duration)),
            subject,
            price_override: price,
            kept: kept_pb,
            added: added_pb,
            removed_lesson_ids: removed_ids,
            skipped_dates: skipped.iter().map(|(d, _, _)| date_pb(*d)).collect(),
            actor_user_id: String::new(),
            occurred_at: Some(timestamp(now)),
        };
        let executed = self
            .series
            .execute_with(
                &stream,
                &SeriesCommand::RecordEditFromOccurrence(Box::new(edit)),
                &event_options(None),
            )
            .await?;
        let mut series = executed.state.series.unwrap_or(series);
        series.revision = executed.revision.unwrap_or(0);
        Ok(ChangedSeries {
            series,
            affected,
            skipped,
        })
    }

    /// EndSeries: cancel every scheduled occurrence on or after `from_date` (the series' zone),
    /// or every one that has not started when no date is given.
    pub async fn end_series(
        &self,
        actor: &Actor,
        series_id: Uuid,
        from_date: Option<NaiveDate>,
        reason: String,
        expected_revision: Option<u64>,
    ) -> Result<(pb::Series, Vec<String>), AppError> {
        let now = Utc::now();
        let stream = streams::series(series_id)?;
        let (loaded, series) = self
            .load_active_series(actor, &stream, series_id, expected_revision)
            .await?;
        let zone = series
            .recurrence
            .as_ref()
            .and_then(|r| crate::domain::local_time::parse_zone(&r.time_zone).ok())
            .unwrap_or(chrono_tz::UTC);
        let from_instant = from_date.map(|d| local_to_utc(zone, d, chrono::NaiveTime::MIN));
        let mut cancelled = Vec::new();
        for occurrence in &loaded.state.occurrences {
            let lesson_id = parse_stored(&occurrence.lesson_id)?;
            let (lesson, _) = self.load_lesson(lesson_id).await?;
            let Some(current) = &lesson.lesson else {
                continue;
            };
            let (start, _) = interval_of(current);
            let in_scope = match from_instant {
                Some(from) => start >= from,
                None => start > now,
            };
            if !in_scope || current.state() != pb::LessonState::Scheduled {
                continue;
            }
            let cancellation = Cancellation {
                cancelled_by: pb::CancellingParty::Tutor,
                by_student_side: false,
                reason: reason.clone(),
                waive_fee: false,
                cause: pb::CancellationCause::SeriesEnded,
                expected_revision: None,
            };
            match self.cancel_lesson(actor, lesson_id, cancellation).await {
                Ok(_) => cancelled.push(occurrence.lesson_id.clone()),
                // Held or cancelled meanwhile: it is no longer the series' to cancel.
                Err(AppError::Lesson(_)) => {}
                Err(other) => return Err(other),
            }
        }
        let from = from_date.unwrap_or_else(|| to_local(zone, now).date());
        let executed = self
            .series
            .execute_with(
                &stream,
                &SeriesCommand::End {
                    from_date: date_pb(from),
                    cancelled_lesson_ids: cancelled.clone(),
                    reason,
                    actor: String::new(),
                    now,
                },
                &event_options(None),
            )
            .await?;
        let mut series = executed.state.series.unwrap_or(series);
        series.revision = executed.revision.unwrap_or(0);
        Ok((series, cancelled))
    }
}

/// Options for an append: the ambient request's correlation id, causation id, actor and trace
/// context as the events' metadata (`repit.common.v1.EventMetadata`), and the client's expected
/// revision if it gave one.
fn event_options(expected_revision: Option<u64>) -> ExecuteOptions {
    let context = RequestContext::current().unwrap_or_default();
    let metadata = EventMetadata {
        correlation_id: context.correlation_id,
        causation_id: context.causation_id,
        actor_user_id: context.actor_user_id,
        traceparent: context.traceparent,
    };
    ExecuteOptions {
        metadata: prost::Message::encode_to_vec(&metadata).into(),
        expected_revision,
        ..ExecuteOptions::default()
    }
}

fn parse_stored(id: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id).map_err(|e| AppError::Internal(format!("stored id {id:?}: {e}")))
}

/// A chrono date as the contract's Date.
pub fn date_pb(date: NaiveDate) -> Date {
    use chrono::Datelike;
    Date {
        year: date.year(),
        month: i32::try_from(date.month()).unwrap_or(1),
        day: i32::try_from(date.day()).unwrap_or(1),
    }
}
