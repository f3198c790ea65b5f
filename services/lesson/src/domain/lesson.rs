//! The lesson aggregate (`lesson-<id>`): one lesson from scheduling to attendance and outcome.
//!
//! Its state is the `Lesson` resource itself, so a command answers with exactly what it produced
//! and the read model folds the same events with the same `evolve`.

use chrono::{DateTime, TimeDelta, Utc};
use pb::{Attendance, CancellationCause, CancellingParty, LessonState};
use repit_event_store::Aggregate;
use repit_proto::repit::common::v1::Money;
use repit_proto::repit::lesson::v1 as pb;

use super::policy;
use repit_platform::time::{duration, from_duration, from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to a lesson.
    LessonEvent, LessonCodec, "repit.lesson.v1", repit_proto::repit::lesson::v1 {
        Scheduled(LessonScheduled),
        Rescheduled(LessonRescheduled),
        DetailsChanged(LessonDetailsChanged),
        Cancelled(LessonCancelled),
        AttendanceMarked(AttendanceMarked),
        OutcomeRecorded(LessonOutcomeRecorded),
        PlannedTopicSet(PlannedTopicSet),
        PlannedTopicShifted(PlannedTopicShifted),
    }
}

/// A lesson as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LessonAggregate {
    /// The resource; `None` until scheduled.
    pub lesson: Option<pb::Lesson>,
    /// The current attendance mark (UNSPECIFIED before the first).
    pub attendance: Attendance,
    /// The request that scheduled it, to recognise a retried ScheduleLesson.
    pub request_id: String,
    /// The last topic shift that touched this lesson and the planned topic it had before, so a
    /// retried ShiftPlannedTopics recognises its own work and answers the same.
    pub last_shift: Option<(String, String)>,
    /// This lesson's own planned topic was shifted on (it was the source of a shift).
    pub topic_shifted_away: bool,
}

/// Schedules a lesson whose slots are already reserved.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleLesson {
    pub lesson_id: String,
    pub tutor_id: String,
    pub student_id: String,
    pub series_id: String,
    pub start: DateTime<Utc>,
    pub duration: TimeDelta,
    pub time_zone: String,
    pub subject: String,
    pub price_override: Option<Money>,
    pub planned_topic: String,
    pub request_id: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// Moves a lesson whose new slot is already reserved.
#[derive(Clone, Debug, PartialEq)]
pub struct RescheduleLesson {
    pub start: DateTime<Utc>,
    pub duration: TimeDelta,
    pub time_zone: String,
    pub reason: String,
    pub by_series_edit: bool,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// Changes subject, price or planned topic (each `Some` is a change asked for).
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateLessonDetails {
    pub subject: Option<String>,
    /// `Some(None)`: back to the tutor's default price.
    pub price_override: Option<Option<Money>>,
    pub planned_topic: Option<String>,
    pub by_series_edit: bool,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// Cancels a lesson under the tutor's policy.
#[derive(Clone, Debug, PartialEq)]
pub struct CancelLesson {
    pub cancelled_by: CancellingParty,
    /// The caller is the student or a parent (they may not cancel after the start).
    pub by_student_side: bool,
    pub reason: String,
    pub cause: CancellationCause,
    pub waive_fee: bool,
    pub policy: pb::CancellationPolicy,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// Marks (or corrects) attendance.
#[derive(Clone, Debug, PartialEq)]
pub struct MarkAttendance {
    pub attendance: Attendance,
    pub note: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// Records (or replaces) what a held lesson covered.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordOutcome {
    pub topic: String,
    pub skills: Vec<String>,
    pub mastery: pb::Mastery,
    pub comment: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// One step of a topic shift: the source lesson gives its topic away (`topic` empty), or a
/// following lesson takes `topic` and hands its own on.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftTopic {
    pub shift_id: String,
    pub source_lesson_id: String,
    /// The lesson the topic comes from (empty on the source lesson).
    pub from_lesson_id: String,
    pub topic: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// What may be asked of a lesson.
#[derive(Clone, Debug, PartialEq)]
pub enum LessonCommand {
    Schedule(Box<ScheduleLesson>),
    Reschedule(RescheduleLesson),
    UpdateDetails(UpdateLessonDetails),
    Cancel(CancelLesson),
    MarkAttendance(MarkAttendance),
    RecordOutcome(RecordOutcome),
    ShiftTopic(ShiftTopic),
}

/// Why a lesson refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LessonError {
    #[error("lesson not found")]
    NotFound,
    #[error("a lesson with this id already exists")]
    AlreadyExists,
    #[error("the lesson is {0}, not scheduled")]
    NotScheduled(&'static str),
    #[error("the lesson is cancelled")]
    Cancelled,
    #[error("attendance cannot be marked before the lesson starts")]
    NotStartedYet,
    #[error("an outcome can only be recorded for a conducted lesson")]
    NotConducted,
    #[error("no topic given and the lesson has no planned topic")]
    NoTopic,
    #[error("a student or parent cannot cancel a lesson after it started")]
    StartedAlready,
    #[error("subject and price cannot change after attendance was marked")]
    DetailsLocked,
    #[error("only a cancelled or missed lesson's topic can be shifted on")]
    NotShiftable,
    #[error("the lesson has no planned topic to shift")]
    NoPlannedTopic,
    #[error("the lesson's planned topic was already shifted")]
    AlreadyShifted,
}

impl LessonError {
    /// The rule a FAILED_PRECONDITION names (`PreconditionFailure` type).
    pub fn rule(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::NotScheduled(_) => "lesson_not_scheduled",
            Self::Cancelled => "lesson_cancelled",
            Self::NotStartedYet => "lesson_not_started",
            Self::NotConducted => "lesson_not_conducted",
            Self::NoTopic => "no_topic",
            Self::StartedAlready => "lesson_started",
            Self::DetailsLocked => "attendance_marked",
            Self::NotShiftable => "lesson_not_missed",
            Self::NoPlannedTopic => "no_planned_topic",
            Self::AlreadyShifted => "topic_already_shifted",
        }
    }
}

/// The name of a lesson state for messages.
pub fn state_name(state: LessonState) -> &'static str {
    match state {
        LessonState::Unspecified => "unknown",
        LessonState::Scheduled => "scheduled",
        LessonState::Conducted => "conducted",
        LessonState::ExcusedAbsence => "an excused absence",
        LessonState::UnexcusedAbsence => "an unexcused absence",
        LessonState::Cancelled => "cancelled",
    }
}

impl LessonAggregate {
    fn existing(&self) -> Result<&pb::Lesson, LessonError> {
        self.lesson.as_ref().ok_or(LessonError::NotFound)
    }
}

/// Start and end of a lesson resource.
pub fn interval_of(lesson: &pb::Lesson) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = from_timestamp(lesson.start_time.as_ref());
    (start, start + from_duration(lesson.duration.as_ref()))
}

impl Aggregate for LessonAggregate {
    type Command = LessonCommand;
    type Event = LessonEvent;
    type Error = LessonError;

    fn decide(&self, command: &LessonCommand) -> Result<Vec<LessonEvent>, LessonError> {
        match command {
            LessonCommand::Schedule(c) => self.schedule(c),
            LessonCommand::Reschedule(c) => self.reschedule(c),
            LessonCommand::UpdateDetails(c) => self.update_details(c),
            LessonCommand::Cancel(c) => self.cancel(c),
            LessonCommand::MarkAttendance(c) => self.mark_attendance(c),
            LessonCommand::RecordOutcome(c) => self.record_outcome(c),
            LessonCommand::ShiftTopic(c) => self.shift_topic(c),
        }
    }

    fn evolve(&mut self, event: &LessonEvent) {
        match event {
            LessonEvent::Scheduled(e) => {
                self.request_id.clone_from(&e.request_id);
                self.lesson = Some(pb::Lesson {
                    lesson_id: e.lesson_id.clone(),
                    tutor_id: e.tutor_id.clone(),
                    student_id: e.student_id.clone(),
                    series_id: e.series_id.clone(),
                    start_time: e.start_time,
                    duration: e.duration,
                    end_time: Some(timestamp(
                        from_timestamp(e.start_time.as_ref()) + from_duration(e.duration.as_ref()),
                    )),
                    time_zone: e.time_zone.clone(),
                    subject: e.subject.clone(),
                    price_override: e.price_override.clone(),
                    planned_topic: e.planned_topic.clone(),
                    state: LessonState::Scheduled as i32,
                    original_start_time: e.start_time,
                    cancellation: None,
                    outcome: None,
                    revision: 0,
                    created_at: e.occurred_at,
                    updated_at: e.occurred_at,
                });
            }
            LessonEvent::Rescheduled(e) => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.start_time = e.new_start_time;
                    lesson.duration = e.new_duration;
                    lesson.end_time = Some(timestamp(
                        from_timestamp(e.new_start_time.as_ref())
                            + from_duration(e.new_duration.as_ref()),
                    ));
                    lesson.time_zone.clone_from(&e.time_zone);
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::DetailsChanged(e) => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.subject.clone_from(&e.subject);
                    lesson.price_override.clone_from(&e.price_override);
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::Cancelled(e) => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.state = LessonState::Cancelled as i32;
                    lesson.cancellation = Some(pb::Cancellation {
                        cancelled_by: e.cancelled_by,
                        actor_user_id: e.actor_user_id.clone(),
                        reason: e.reason.clone(),
                        cause: e.cause,
                        kind: e.kind,
                        notice: e.notice,
                        fee_applies: e.fee_applies,
                        fee: e.fee.clone(),
                        counted_as_missed: e.counted_as_missed,
                        fee_waived: e.fee_waived,
                        policy: e.policy.clone(),
                        cancelled_at: e.occurred_at,
                    });
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::AttendanceMarked(e) => {
                self.attendance = e.attendance();
                if let Some(lesson) = &mut self.lesson {
                    lesson.state = match e.attendance() {
                        Attendance::Attended => LessonState::Conducted,
                        Attendance::ExcusedAbsence => LessonState::ExcusedAbsence,
                        Attendance::UnexcusedAbsence => LessonState::UnexcusedAbsence,
                        Attendance::Unspecified => LessonState::Scheduled,
                    } as i32;
                    if e.outcome_withdrawn {
                        lesson.outcome = None;
                    }
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::OutcomeRecorded(e) => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.outcome = Some(pb::LessonOutcome {
                        topic: e.topic.clone(),
                        skills: e.skills.clone(),
                        mastery: e.mastery,
                        comment: e.comment.clone(),
                        recorded_at: e.occurred_at,
                    });
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::PlannedTopicSet(e) => {
                if let Some(lesson) = &mut self.lesson {
                    lesson.planned_topic.clone_from(&e.planned_topic);
                    lesson.updated_at = e.occurred_at;
                }
            }
            LessonEvent::PlannedTopicShifted(e) => {
                self.last_shift = Some((e.shift_id.clone(), e.previous_planned_topic.clone()));
                if let Some(lesson) = &mut self.lesson {
                    if e.source_lesson_id == lesson.lesson_id {
                        self.topic_shifted_away = true;
                    }
                    lesson.planned_topic.clone_from(&e.planned_topic);
                    lesson.updated_at = e.occurred_at;
                }
            }
        }
    }
}

impl LessonAggregate {
    fn schedule(&self, c: &ScheduleLesson) -> Result<Vec<LessonEvent>, LessonError> {
        if self.lesson.is_some() {
            // A retried ScheduleLesson (same request) changes nothing; anything else is a clash.
            return if !c.request_id.is_empty() && self.request_id == c.request_id {
                Ok(vec![])
            } else {
                Err(LessonError::AlreadyExists)
            };
        }
        Ok(vec![LessonEvent::Scheduled(pb::LessonScheduled {
            lesson_id: c.lesson_id.clone(),
            tutor_id: c.tutor_id.clone(),
            student_id: c.student_id.clone(),
            series_id: c.series_id.clone(),
            start_time: Some(timestamp(c.start)),
            duration: Some(duration(c.duration)),
            time_zone: c.time_zone.clone(),
            subject: c.subject.clone(),
            price_override: c.price_override.clone(),
            planned_topic: c.planned_topic.clone(),
            request_id: c.request_id.clone(),
            actor_user_id: c.actor.clone(),
            occurred_at: Some(timestamp(c.now)),
        })])
    }

    fn require_scheduled(lesson: &pb::Lesson) -> Result<(), LessonError> {
        match lesson.state() {
            LessonState::Scheduled => Ok(()),
            LessonState::Cancelled => Err(LessonError::Cancelled),
            other => Err(LessonError::NotScheduled(state_name(other))),
        }
    }

    fn reschedule(&self, c: &RescheduleLesson) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        Self::require_scheduled(lesson)?;
        let (start, end) = interval_of(lesson);
        if start == c.start && end - start == c.duration && lesson.time_zone == c.time_zone {
            return Ok(vec![]);
        }
        Ok(vec![LessonEvent::Rescheduled(pb::LessonRescheduled {
            lesson_id: lesson.lesson_id.clone(),
            tutor_id: lesson.tutor_id.clone(),
            student_id: lesson.student_id.clone(),
            series_id: lesson.series_id.clone(),
            previous_start_time: lesson.start_time,
            previous_duration: lesson.duration,
            new_start_time: Some(timestamp(c.start)),
            new_duration: Some(duration(c.duration)),
            original_start_time: lesson.original_start_time,
            time_zone: c.time_zone.clone(),
            reason: c.reason.clone(),
            by_series_edit: c.by_series_edit,
            actor_user_id: c.actor.clone(),
            occurred_at: Some(timestamp(c.now)),
        })])
    }

    fn update_details(&self, c: &UpdateLessonDetails) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        if lesson.state() == LessonState::Cancelled {
            return Err(LessonError::Cancelled);
        }
        let subject = c.subject.clone().unwrap_or_else(|| lesson.subject.clone());
        let price = match &c.price_override {
            Some(price) => price.clone(),
            None => lesson.price_override.clone(),
        };
        let details_change = subject != lesson.subject || price != lesson.price_override;
        if details_change && self.attendance != Attendance::Unspecified {
            return Err(LessonError::DetailsLocked);
        }
        let mut events = Vec::new();
        if details_change {
            events.push(LessonEvent::DetailsChanged(pb::LessonDetailsChanged {
                lesson_id: lesson.lesson_id.clone(),
                tutor_id: lesson.tutor_id.clone(),
                student_id: lesson.student_id.clone(),
                series_id: lesson.series_id.clone(),
                subject,
                price_override: price,
                previous_subject: lesson.subject.clone(),
                previous_price_override: lesson.price_override.clone(),
                by_series_edit: c.by_series_edit,
                actor_user_id: c.actor.clone(),
                occurred_at: Some(timestamp(c.now)),
            }));
        }
        if let Some(topic) = &c.planned_topic
            && *topic != lesson.planned_topic
        {
            events.push(LessonEvent::PlannedTopicSet(pb::PlannedTopicSet {
                lesson_id: lesson.lesson_id.clone(),
                tutor_id: lesson.tutor_id.clone(),
                student_id: lesson.student_id.clone(),
                planned_topic: topic.clone(),
                previous_planned_topic: lesson.planned_topic.clone(),
                actor_user_id: c.actor.clone(),
                occurred_at: Some(timestamp(c.now)),
            }));
        }
        Ok(events)
    }

    fn cancel(&self, c: &CancelLesson) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        Self::require_scheduled(lesson)?;
        let (start, _) = interval_of(lesson);
        if c.by_student_side && c.now >= start {
            return Err(LessonError::StartedAlready);
        }
        let judgement = policy::judge(
            &c.policy,
            c.cancelled_by,
            start,
            c.now,
            lesson.price_override.as_ref(),
            c.waive_fee,
        );
        Ok(vec![LessonEvent::Cancelled(pb::LessonCancelled {
            lesson_id: lesson.lesson_id.clone(),
            tutor_id: lesson.tutor_id.clone(),
            student_id: lesson.student_id.clone(),
            series_id: lesson.series_id.clone(),
            start_time: lesson.start_time,
            duration: lesson.duration,
            cancelled_by: c.cancelled_by as i32,
            reason: c.reason.clone(),
            cause: c.cause as i32,
            kind: judgement.kind as i32,
            notice: Some(duration(judgement.notice)),
            policy: Some(c.policy.clone()),
            fee_applies: judgement.fee_applies,
            fee: judgement.fee,
            counted_as_missed: judgement.counted_as_missed,
            fee_waived: judgement.fee_waived,
            actor_user_id: c.actor.clone(),
            occurred_at: Some(timestamp(c.now)),
        })])
    }

    fn mark_attendance(&self, c: &MarkAttendance) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        if lesson.state() == LessonState::Cancelled {
            return Err(LessonError::Cancelled);
        }
        let (start, _) = interval_of(lesson);
        if c.now < start {
            return Err(LessonError::NotStartedYet);
        }
        if self.attendance == c.attendance {
            return Ok(vec![]);
        }
        let outcome_withdrawn = self.attendance == Attendance::Attended
            && c.attendance != Attendance::Attended
            && lesson.outcome.is_some();
        Ok(vec![LessonEvent::AttendanceMarked(pb::AttendanceMarked {
            lesson_id: lesson.lesson_id.clone(),
            tutor_id: lesson.tutor_id.clone(),
            student_id: lesson.student_id.clone(),
            series_id: lesson.series_id.clone(),
            attendance: c.attendance as i32,
            previous_attendance: self.attendance as i32,
            start_time: lesson.start_time,
            duration: lesson.duration,
            subject: lesson.subject.clone(),
            price: lesson.price_override.clone(),
            note: c.note.clone(),
            outcome_withdrawn,
            actor_user_id: c.actor.clone(),
            occurred_at: Some(timestamp(c.now)),
        })])
    }

    fn shift_topic(&self, c: &ShiftTopic) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        if self
            .last_shift
            .as_ref()
            .is_some_and(|(shift, _)| *shift == c.shift_id)
        {
            return Ok(vec![]); // A retry of this very shift.
        }
        let is_source = c.source_lesson_id == lesson.lesson_id;
        if is_source {
            if !matches!(
                lesson.state(),
                LessonState::Cancelled
                    | LessonState::ExcusedAbsence
                    | LessonState::UnexcusedAbsence
            ) {
                return Err(LessonError::NotShiftable);
            }
            if self.topic_shifted_away {
                return Err(LessonError::AlreadyShifted);
            }
            if lesson.planned_topic.is_empty() {
                return Err(LessonError::NoPlannedTopic);
            }
        } else {
            Self::require_scheduled(lesson)?;
        }
        Ok(vec![LessonEvent::PlannedTopicShifted(
            pb::PlannedTopicShifted {
                lesson_id: lesson.lesson_id.clone(),
                tutor_id: lesson.tutor_id.clone(),
                student_id: lesson.student_id.clone(),
                shift_id: c.shift_id.clone(),
                source_lesson_id: c.source_lesson_id.clone(),
                from_lesson_id: c.from_lesson_id.clone(),
                planned_topic: if is_source {
                    String::new()
                } else {
                    c.topic.clone()
                },
                previous_planned_topic: lesson.planned_topic.clone(),
                actor_user_id: c.actor.clone(),
                occurred_at: Some(timestamp(c.now)),
            },
        )])
    }

    fn record_outcome(&self, c: &RecordOutcome) -> Result<Vec<LessonEvent>, LessonError> {
        let lesson = self.existing()?;
        if lesson.state() != LessonState::Conducted {
            return Err(LessonError::NotConducted);
        }
        let topic = if c.topic.is_empty() {
            lesson.planned_topic.clone()
        } else {
            c.topic.clone()
        };
        if topic.is_empty() {
            return Err(LessonError::NoTopic);
        }
        Ok(vec![LessonEvent::OutcomeRecorded(
            pb::LessonOutcomeRecorded {
                lesson_id: lesson.lesson_id.clone(),
                tutor_id: lesson.tutor_id.clone(),
                student_id: lesson.student_id.clone(),
                subject: lesson.subject.clone(),
                topic,
                skills: c.skills.clone(),
                mastery: c.mastery as i32,
                comment: c.comment.clone(),
                lesson_start_time: lesson.start_time,
                actor_user_id: c.actor.clone(),
                occurred_at: Some(timestamp(c.now)),
            },
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn schedule_command() -> ScheduleLesson {
        ScheduleLesson {
            lesson_id: "l1".into(),
            tutor_id: "t1".into(),
            student_id: "s1".into(),
            series_id: String::new(),
            start: now() + TimeDelta::hours(48),
            duration: TimeDelta::minutes(60),
            time_zone: "Europe/Moscow".into(),
            subject: "Maths".into(),
            price_override: None,
            planned_topic: "Fractions".into(),
            request_id: "r1".into(),
            actor: "t1".into(),
            now: now(),
        }
    }

    fn scheduled() -> LessonEvent {
        let mut state = LessonAggregate::default();
        let events = state
            .decide(&LessonCommand::Schedule(Box::new(schedule_command())))
            .unwrap_or_default();
        for e in &events {
            state.evolve(e);
        }
        events
            .into_iter()
            .next()
            .unwrap_or_else(|| LessonEvent::Scheduled(Default::default()))
    }

    fn cancel(by: CancellingParty, at: DateTime<Utc>) -> LessonCommand {
        LessonCommand::Cancel(CancelLesson {
            cancelled_by: by,
            by_student_side: by == CancellingParty::Student,
            reason: "ill".into(),
            cause: CancellationCause::Requested,
            waive_fee: false,
            policy: pb::CancellationPolicy {
                notice_hours: 24,
                late_cancellation_fee_kind: pb::LateCancellationFeeKind::None as i32,
                late_cancellation_fixed_fee: None,
                late_cancellation_counts_as_missed: true,
            },
            actor: "s1".into(),
            now: at,
        })
    }

    #[test]
    fn a_retried_schedule_changes_nothing() {
        given::<LessonAggregate>([scheduled()])
            .when(&LessonCommand::Schedule(Box::new(schedule_command())))
            .then([]);
    }

    #[test]
    fn a_schedule_with_another_request_on_an_existing_lesson_is_refused() {
        let mut other = schedule_command();
        other.request_id = "r2".into();
        given::<LessonAggregate>([scheduled()])
            .when(&LessonCommand::Schedule(Box::new(other)))
            .then_error(LessonError::AlreadyExists);
    }

    #[test]
    fn a_late_student_cancellation_counts_as_missed() {
        let result = given::<LessonAggregate>([scheduled()])
            .when(&cancel(
                CancellingParty::Student,
                now() + TimeDelta::hours(30),
            ))
            .into_result();
        let Ok(events) = result else {
            panic!("refused: {result:?}")
        };
        let [LessonEvent::Cancelled(cancelled)] = events.as_slice() else {
            panic!("unexpected events {events:?}")
        };
        assert_eq!(cancelled.kind(), pb::CancellationKind::Late);
        assert!(cancelled.counted_as_missed);
    }

    #[test]
    fn a_student_cannot_cancel_after_the_start() {
        given::<LessonAggregate>([scheduled()])
            .when(&cancel(
                CancellingParty::Student,
                now() + TimeDelta::hours(49),
            ))
            .then_error(LessonError::StartedAlready);
    }

    #[test]
    fn attendance_cannot_be_marked_before_the_start() {
        given::<LessonAggregate>([scheduled()])
            .when(&LessonCommand::MarkAttendance(MarkAttendance {
                attendance: Attendance::Attended,
                note: String::new(),
                actor: "t1".into(),
                now: now(),
            }))
            .then_error(LessonError::NotStartedYet);
    }

    #[test]
    fn marking_an_absence_after_an_outcome_withdraws_it() {
        let later = now() + TimeDelta::hours(49);
        let mark = |attendance| {
            LessonCommand::MarkAttendance(MarkAttendance {
                attendance,
                note: String::new(),
                actor: "t1".into(),
                now: later,
            })
        };
        let mut state = LessonAggregate::default();
        state.evolve(&scheduled());
        for command in [
            mark(Attendance::Attended),
            LessonCommand::RecordOutcome(RecordOutcome {
                topic: String::new(),
                skills: vec![],
                mastery: pb::Mastery::Learned,
                comment: String::new(),
                actor: "t1".into(),
                now: later,
            }),
        ] {
            for event in state.decide(&command).unwrap_or_default() {
                state.evolve(&event);
            }
        }
        let events = state
            .decide(&mark(Attendance::UnexcusedAbsence))
            .unwrap_or_default();
        let [LessonEvent::AttendanceMarked(marked)] = events.as_slice() else {
            panic!("unexpected events {events:?}")
        };
        assert!(marked.outcome_withdrawn);
        assert_eq!(marked.previous_attendance(), Attendance::Attended);
        state.evolve(&events[0]);
        assert!(state.lesson.as_ref().is_some_and(|l| l.outcome.is_none()));
    }

    #[test]
    fn an_outcome_needs_a_conducted_lesson() {
        given::<LessonAggregate>([scheduled()])
            .when(&LessonCommand::RecordOutcome(RecordOutcome {
                topic: String::new(),
                skills: vec![],
                mastery: pb::Mastery::Learned,
                comment: String::new(),
                actor: "t1".into(),
                now: now(),
            }))
            .then_error(LessonError::NotConducted);
    }

    fn shift(source: &str) -> LessonCommand {
        LessonCommand::ShiftTopic(ShiftTopic {
            shift_id: "shift-1".into(),
            source_lesson_id: source.into(),
            from_lesson_id: String::new(),
            topic: String::new(),
            actor: "t1".into(),
            now: now(),
        })
    }

    #[test]
    fn a_scheduled_lesson_cannot_be_the_source_of_a_topic_shift() {
        given::<LessonAggregate>([scheduled()])
            .when(&shift("l1"))
            .then_error(LessonError::NotShiftable);
    }

    #[test]
    fn a_cancelled_lessons_topic_shifts_once_and_a_retry_changes_nothing() {
        let mut state = LessonAggregate::default();
        state.evolve(&scheduled());
        let cancelled = state
            .decide(&cancel(CancellingParty::Tutor, now()))
            .unwrap_or_default()
            .remove(0);
        state.evolve(&cancelled);
        let shifted = state.decide(&shift("l1")).unwrap_or_default();
        let [LessonEvent::PlannedTopicShifted(event)] = shifted.as_slice() else {
            panic!("unexpected events {shifted:?}")
        };
        assert_eq!(event.previous_planned_topic, "Fractions");
        assert!(event.planned_topic.is_empty());
        given::<LessonAggregate>([scheduled(), cancelled.clone(), shifted[0].clone()])
            .when(&shift("l1"))
            .then([]);
        let mut other = shift("l1");
        if let LessonCommand::ShiftTopic(c) = &mut other {
            c.shift_id = "shift-2".into();
        }
        given::<LessonAggregate>([scheduled(), cancelled, shifted[0].clone()])
            .when(&other)
            .then_error(LessonError::AlreadyShifted);
    }

    #[test]
    fn a_cancelled_lesson_cannot_be_rescheduled() {
        let cancelled = {
            let mut state = LessonAggregate::default();
            state.evolve(&scheduled());
            state
                .decide(&cancel(CancellingParty::Tutor, now()))
                .unwrap_or_default()
                .remove(0)
        };
        given::<LessonAggregate>([scheduled(), cancelled])
            .when(&LessonCommand::Reschedule(RescheduleLesson {
                start: now() + TimeDelta::hours(72),
                duration: TimeDelta::minutes(60),
                time_zone: "Europe/Moscow".into(),
                reason: String::new(),
                by_series_edit: false,
                actor: "t1".into(),
                now: now(),
            }))
            .then_error(LessonError::Cancelled);
    }
}
