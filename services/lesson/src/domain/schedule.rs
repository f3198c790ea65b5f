//! One person's busy time (`tutor-schedule-<id>`, `student-schedule-<id>`): the consistency
//! boundary for "no double booking".
//!
//! A lesson reserves its interval in the tutor's and the student's schedule before its own event
//! is written. Each reservation is an append with the expected revision, so of two bookings racing
//! for one slot exactly one is decided on the state that includes the other, and is refused.
//! Intervals are half-open: back-to-back lessons are fine.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use pb::SlotReleaseReason;
use repit_event_store::Aggregate;
use repit_proto::repit::common::v1::TimeRange;
use repit_proto::repit::lesson::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to a tutor's or a student's schedule.
    ScheduleEvent, ScheduleCodec, "repit.lesson.v1", repit_proto::repit::lesson::v1 {
        TutorReserved(TutorSlotReserved),
        TutorReleased(TutorSlotReleased),
        TutorFeedRotated(TutorCalendarFeedRotated),
        StudentReserved(StudentSlotReserved),
        StudentReleased(StudentSlotReleased),
        StudentFeedRotated(StudentCalendarFeedRotated),
    }
}

/// Whose schedule a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    Tutor,
    Student,
}

/// One busy interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub lesson_id: String,
    pub tutor_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A slot a lesson asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRequest {
    pub lesson_id: String,
    pub tutor_id: String,
    pub student_id: String,
    pub series_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A reservation in the way of a requested slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub party: Party,
    /// The slot that was asked for.
    pub requested_lesson_id: String,
    /// The lesson holding the busy interval, and its tutor (for the tenancy rule on disclosure).
    pub lesson_id: String,
    pub tutor_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The longest lesson; bounds the scan for overlaps.
pub const MAX_LESSON: TimeDelta = TimeDelta::hours(12);

/// A schedule as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleAggregate {
    party: Option<Party>,
    by_start: BTreeMap<(DateTime<Utc>, String), Reservation>,
    by_lesson: HashMap<String, DateTime<Utc>>,
    /// The calendar feed generation (0: never rotated).
    pub feed_generation: u32,
}

/// What may be asked of a schedule. `owner` is the tutor or student the stream belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleCommand {
    /// Reserves every slot, or none: the first conflict refuses the whole command. A slot whose
    /// lesson already holds exactly that interval is a retry and adds nothing; one whose lesson
    /// holds another interval moves (release then reserve).
    Reserve {
        party: Party,
        owner: String,
        slots: Vec<SlotRequest>,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Gives back the reservations of these lessons (those it holds; others are ignored).
    Release {
        party: Party,
        owner: String,
        lesson_ids: Vec<String>,
        reason: SlotReleaseReason,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Replaces the calendar feed token.
    RotateFeed {
        party: Party,
        owner: String,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why a schedule refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "the {} is already busy from {} to {}",
        party_name(.0.party),
        .0.start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        .0.end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    )]
    Conflict(Box<Conflict>),
}

fn party_name(party: Party) -> &'static str {
    match party {
        Party::Tutor => "tutor",
        Party::Student => "student",
    }
}

impl ScheduleAggregate {
    /// The first reservation other than `lesson_id`'s overlapping [start, end), if any.
    pub fn conflict(
        &self,
        lesson_id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<&Reservation> {
        let from = (start - MAX_LESSON, String::new());
        self.by_start
            .range(from..)
            .map(|(_, r)| r)
            .take_while(|r| r.start < end)
            .find(|r| r.lesson_id != lesson_id && r.end > start)
    }

    /// The reservation a lesson holds.
    pub fn reservation(&self, lesson_id: &str) -> Option<&Reservation> {
        let start = self.by_lesson.get(lesson_id)?;
        self.by_start.get(&(*start, lesson_id.to_owned()))
    }

    fn insert(&mut self, reservation: Reservation) {
        self.remove(&reservation.lesson_id.clone());
        self.by_lesson
            .insert(reservation.lesson_id.clone(), reservation.start);
        self.by_start.insert(
            (reservation.start, reservation.lesson_id.clone()),
            reservation,
        );
    }

    fn remove(&mut self, lesson_id: &str) {
        if let Some(start) = self.by_lesson.remove(lesson_id) {
            self.by_start.remove(&(start, lesson_id.to_owned()));
        }
    }
}

fn range(start: DateTime<Utc>, end: DateTime<Utc>) -> Option<TimeRange> {
    Some(TimeRange {
        start: Some(timestamp(start)),
        end: Some(timestamp(end)),
    })
}

fn bounds(range: Option<&TimeRange>) -> (DateTime<Utc>, DateTime<Utc>) {
    let range = range.cloned().unwrap_or_default();
    (
        from_timestamp(range.start.as_ref()),
        from_timestamp(range.end.as_ref()),
    )
}

impl Aggregate for ScheduleAggregate {
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = ScheduleError;

    fn decide(&self, command: &ScheduleCommand) -> Result<Vec<ScheduleEvent>, ScheduleError> {
        match command {
            ScheduleCommand::Reserve {
                party,
                owner,
                slots,
                actor,
                now,
            } => {
                let mut planned = self.clone();
                let mut events = Vec::new();
                for slot in slots {
                    if let Some(held) = planned.reservation(&slot.lesson_id)
                        && held.start == slot.start
                        && held.end == slot.end
                    {
                        continue;
                    }
                    if let Some(busy) = planned.conflict(&slot.lesson_id, slot.start, slot.end) {
                        return Err(ScheduleError::Conflict(Box::new(Conflict {
                            party: *party,
                            requested_lesson_id: slot.lesson_id.clone(),
                            lesson_id: busy.lesson_id.clone(),
                            tutor_id: busy.tutor_id.clone(),
                            start: busy.start,
                            end: busy.end,
                        })));
                    }
                    if let Some(held) = planned.reservation(&slot.lesson_id).cloned() {
                        let release = release_event(
                            *party,
                            owner,
                            &held,
                            SlotReleaseReason::LessonRescheduled,
                            actor,
                            *now,
                        );
                        planned.evolve(&release);
                        events.push(release);
                    }
                    let reserve = match party {
                        Party::Tutor => ScheduleEvent::TutorReserved(pb::TutorSlotReserved {
                            tutor_id: owner.clone(),
                            lesson_id: slot.lesson_id.clone(),
                            student_id: slot.student_id.clone(),
                            series_id: slot.series_id.clone(),
                            time_range: range(slot.start, slot.end),
                            actor_user_id: actor.clone(),
                            occurred_at: Some(timestamp(*now)),
                        }),
                        Party::Student => ScheduleEvent::StudentReserved(pb::StudentSlotReserved {
                            student_id: owner.clone(),
                            lesson_id: slot.lesson_id.clone(),
                            tutor_id: slot.tutor_id.clone(),
                            series_id: slot.series_id.clone(),
                            time_range: range(slot.start, slot.end),
                            actor_user_id: actor.clone(),
                            occurred_at: Some(timestamp(*now)),
                        }),
                    };
                    planned.evolve(&reserve);
                    events.push(reserve);
                }
                Ok(events)
            }
            ScheduleCommand::Release {
                party,
                owner,
                lesson_ids,
                reason,
                actor,
                now,
            } => Ok(lesson_ids
                .iter()
                .filter_map(|id| self.reservation(id))
                .map(|held| release_event(*party, owner, held, *reason, actor, *now))
                .collect()),
            ScheduleCommand::RotateFeed {
                party,
                owner,
                actor,
                now,
            } => {
                let generation = self.feed_generation.saturating_add(1);
                Ok(vec![match party {
                    Party::Tutor => ScheduleEvent::TutorFeedRotated(pb::TutorCalendarFeedRotated {
                        tutor_id: owner.clone(),
                        generation,
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    }),
                    Party::Student => {
                        ScheduleEvent::StudentFeedRotated(pb::StudentCalendarFeedRotated {
                            student_id: owner.clone(),
                            generation,
                            actor_user_id: actor.clone(),
                            occurred_at: Some(timestamp(*now)),
                        })
                    }
                }])
            }
        }
    }

    fn evolve(&mut self, event: &ScheduleEvent) {
        match event {
            ScheduleEvent::TutorReserved(e) => {
                self.party = Some(Party::Tutor);
                let (start, end) = bounds(e.time_range.as_ref());
                self.insert(Reservation {
                    lesson_id: e.lesson_id.clone(),
                    tutor_id: e.tutor_id.clone(),
                    start,
                    end,
                });
            }
            ScheduleEvent::StudentReserved(e) => {
                self.party = Some(Party::Student);
                let (start, end) = bounds(e.time_range.as_ref());
                self.insert(Reservation {
                    lesson_id: e.lesson_id.clone(),
                    tutor_id: e.tutor_id.clone(),
                    start,
                    end,
                });
            }
            ScheduleEvent::TutorReleased(e) => self.remove(&e.lesson_id),
            ScheduleEvent::StudentReleased(e) => self.remove(&e.lesson_id),
            ScheduleEvent::TutorFeedRotated(e) => self.feed_generation = e.generation,
            ScheduleEvent::StudentFeedRotated(e) => self.feed_generation = e.generation,
        }
    }
}

fn release_event(
    party: Party,
    owner: &str,
    held: &Reservation,
    reason: SlotReleaseReason,
    actor: &str,
    now: DateTime<Utc>,
) -> ScheduleEvent {
    match party {
        Party::Tutor => ScheduleEvent::TutorReleased(pb::TutorSlotReleased {
            tutor_id: owner.to_owned(),
            lesson_id: held.lesson_id.clone(),
            time_range: range(held.start, held.end),
            reason: reason as i32,
            actor_user_id: actor.to_owned(),
            occurred_at: Some(timestamp(now)),
        }),
        Party::Student => ScheduleEvent::StudentReleased(pb::StudentSlotReleased {
            student_id: owner.to_owned(),
            lesson_id: held.lesson_id.clone(),
            time_range: range(held.start, held.end),
            reason: reason as i32,
            actor_user_id: actor.to_owned(),
            occurred_at: Some(timestamp(now)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + TimeDelta::minutes(minutes)
    }

    fn slot(lesson: &str, from: i64, to: i64) -> SlotRequest {
        SlotRequest {
            lesson_id: lesson.into(),
            tutor_id: "t1".into(),
            student_id: "s1".into(),
            series_id: String::new(),
            start: at(from),
            end: at(to),
        }
    }

    fn reserve(slots: Vec<SlotRequest>) -> ScheduleCommand {
        ScheduleCommand::Reserve {
            party: Party::Tutor,
            owner: "t1".into(),
            slots,
            actor: "t1".into(),
            now: at(0),
        }
    }

    fn reserved(lesson: &str, from: i64, to: i64) -> ScheduleEvent {
        ScheduleEvent::TutorReserved(pb::TutorSlotReserved {
            tutor_id: "t1".into(),
            lesson_id: lesson.into(),
            student_id: "s1".into(),
            series_id: String::new(),
            time_range: range(at(from), at(to)),
            actor_user_id: "t1".into(),
            occurred_at: Some(timestamp(at(0))),
        })
    }

    #[test]
    fn a_tutor_cannot_be_double_booked() {
        let result = given::<ScheduleAggregate>([reserved("a", 60, 120)])
            .when(&reserve(vec![slot("b", 90, 150)]))
            .into_result();
        let Err(ScheduleError::Conflict(conflict)) = result else {
            panic!("expected a conflict, got {result:?}")
        };
        assert_eq!(conflict.lesson_id, "a");
        assert_eq!((conflict.start, conflict.end), (at(60), at(120)));
    }

    #[test]
    fn back_to_back_lessons_do_not_conflict() {
        given::<ScheduleAggregate>([reserved("a", 60, 120)])
            .when(&reserve(vec![slot("b", 120, 180)]))
            .then([reserved("b", 120, 180)]);
    }

    #[test]
    fn a_retried_reservation_adds_nothing() {
        given::<ScheduleAggregate>([reserved("a", 60, 120)])
            .when(&reserve(vec![slot("a", 60, 120)]))
            .then([]);
    }

    #[test]
    fn slots_of_one_command_conflict_with_each_other() {
        let result = given::<ScheduleAggregate>([])
            .when(&reserve(vec![slot("a", 0, 60), slot("b", 30, 90)]))
            .into_result();
        assert!(
            matches!(result, Err(ScheduleError::Conflict(_))),
            "{result:?}"
        );
    }

    #[test]
    fn moving_a_lesson_may_overlap_its_own_old_interval() {
        let result = given::<ScheduleAggregate>([reserved("a", 60, 120)])
            .when(&reserve(vec![slot("a", 90, 150)]))
            .into_result();
        let Ok(events) = result else {
            panic!("refused: {result:?}")
        };
        assert!(matches!(
            events.as_slice(),
            [
                ScheduleEvent::TutorReleased(_),
                ScheduleEvent::TutorReserved(_)
            ]
        ));
    }

    #[test]
    fn a_released_slot_can_be_booked_again() {
        let released = ScheduleEvent::TutorReleased(pb::TutorSlotReleased {
            tutor_id: "t1".into(),
            lesson_id: "a".into(),
            time_range: range(at(60), at(120)),
            reason: SlotReleaseReason::LessonCancelled as i32,
            actor_user_id: "t1".into(),
            occurred_at: Some(timestamp(at(0))),
        });
        given::<ScheduleAggregate>([reserved("a", 60, 120), released])
            .when(&reserve(vec![slot("b", 60, 120)]))
            .then([reserved("b", 60, 120)]);
    }
}
