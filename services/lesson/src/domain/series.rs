//! The series aggregate (`series-<id>`): a recurring series' rule and its occurrences. Each
//! occurrence is also a lesson with its own stream; the series records which lessons it made and
//! which were edited on their own.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::common::v1::Date;
use repit_proto::repit::lesson::v1 as pb;

use repit_platform::time::timestamp;

repit_platform::proto_events! {
    /// What happens to a series.
    SeriesEvent, SeriesCodec, "repit.lesson.v1", repit_proto::repit::lesson::v1 {
        Created(SeriesCreated),
        OccurrenceEdited(SeriesOccurrenceEdited),
        EditedFromOccurrence(SeriesEditedFromOccurrence),
        Ended(SeriesEnded),
    }
}

/// A series as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesAggregate {
    /// The resource; `None` until created.
    pub series: Option<pb::Series>,
    /// Every occurrence created, in time order.
    pub occurrences: Vec<pb::SeriesOccurrence>,
    /// The request that created it.
    pub request_id: String,
    /// Occurrences moved in time by hand: a later "this and following" change keeps their time.
    pub moved: std::collections::HashSet<String>,
}

/// What may be asked of a series.
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesCommand {
    /// Records a new series whose occurrences' slots are reserved (the event is built by the
    /// application, which expanded the rule and reserved the slots).
    Create(Box<pb::SeriesCreated>),
    /// Records that one occurrence was moved or changed by hand.
    RecordOccurrenceEdit(Box<pb::SeriesOccurrenceEdited>),
    /// Records a "this and following" change whose lessons the application already changed.
    RecordEditFromOccurrence(Box<pb::SeriesEditedFromOccurrence>),
    /// Ends the series from a date; the application cancels the listed lessons.
    End {
        from_date: Date,
        cancelled_lesson_ids: Vec<String>,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why a series refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("series not found")]
    NotFound,
    #[error("a series with this id already exists")]
    AlreadyExists,
    #[error("the series has already ended")]
    AlreadyEnded,
}

impl Aggregate for SeriesAggregate {
    type Command = SeriesCommand;
    type Event = SeriesEvent;
    type Error = SeriesError;

    fn decide(&self, command: &SeriesCommand) -> Result<Vec<SeriesEvent>, SeriesError> {
        match command {
            SeriesCommand::Create(created) => match &self.series {
                Some(_)
                    if self.request_id == created.request_id && !created.request_id.is_empty() =>
                {
                    Ok(vec![])
                }
                Some(_) => Err(SeriesError::AlreadyExists),
                None => Ok(vec![SeriesEvent::Created((**created).clone())]),
            },
            SeriesCommand::RecordOccurrenceEdit(edit) => {
                self.series.as_ref().ok_or(SeriesError::NotFound)?;
                Ok(vec![SeriesEvent::OccurrenceEdited((**edit).clone())])
            }
            SeriesCommand::RecordEditFromOccurrence(edit) => {
                let series = self.series.as_ref().ok_or(SeriesError::NotFound)?;
                if series.state() == pb::SeriesState::Ended {
                    return Err(SeriesError::AlreadyEnded);
                }
                Ok(vec![SeriesEvent::EditedFromOccurrence((**edit).clone())])
            }
            SeriesCommand::End {
                from_date,
                cancelled_lesson_ids,
                reason,
                actor,
                now,
            } => {
                let series = self.series.as_ref().ok_or(SeriesError::NotFound)?;
                if series.state() == pb::SeriesState::Ended {
                    return Err(SeriesError::AlreadyEnded);
                }
                Ok(vec![SeriesEvent::Ended(pb::SeriesEnded {
                    series_id: series.series_id.clone(),
                    tutor_id: series.tutor_id.clone(),
                    student_id: series.student_id.clone(),
                    from_date: Some(*from_date),
                    cancelled_lesson_ids: cancelled_lesson_ids.clone(),
                    reason: reason.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
        }
    }

    fn evolve(&mut self, event: &SeriesEvent) {
        match event {
            SeriesEvent::Created(e) => {
                self.request_id.clone_from(&e.request_id);
                self.occurrences.clone_from(&e.occurrences);
                self.series = Some(pb::Series {
                    series_id: e.series_id.clone(),
                    tutor_id: e.tutor_id.clone(),
                    student_id: e.student_id.clone(),
                    subject: e.subject.clone(),
                    duration: e.duration,
                    price_override: e.price_override.clone(),
                    recurrence: e.recurrence.clone(),
                    state: pb::SeriesState::Active as i32,
                    ended_from_date: None,
                    occurrence_count: i32::try_from(e.occurrences.len()).unwrap_or(i32::MAX),
                    revision: 0,
                    created_at: e.occurred_at,
                    updated_at: e.occurred_at,
                });
            }
            SeriesEvent::OccurrenceEdited(e) => {
                if e.time_changed {
                    self.moved.insert(e.lesson_id.clone());
                }
                if let Some(occurrence) = self
                    .occurrences
                    .iter_mut()
                    .find(|o| o.lesson_id == e.lesson_id)
                {
                    occurrence.start_time = e.start_time;
                }
                if let Some(series) = &mut self.series {
                    series.updated_at = e.occurred_at;
                }
            }
            SeriesEvent::EditedFromOccurrence(e) => {
                for kept in &e.kept {
                    if let Some(occurrence) = self
                        .occurrences
                        .iter_mut()
                        .find(|o| o.lesson_id == kept.lesson_id)
                    {
                        occurrence.start_time = kept.start_time;
                    }
                }
                self.occurrences.extend(e.added.iter().cloned());
                self.occurrences
                    .sort_by_key(|o| o.start_time.map_or((0, 0), |t| (t.seconds, t.nanos)));
                if let Some(series) = &mut self.series {
                    series.recurrence.clone_from(&e.recurrence);
                    series.duration = e.duration;
                    series.subject.clone_from(&e.subject);
                    series.price_override.clone_from(&e.price_override);
                    series.occurrence_count =
                        i32::try_from(self.occurrences.len()).unwrap_or(i32::MAX);
                    series.updated_at = e.occurred_at;
                }
            }
            SeriesEvent::Ended(e) => {
                if let Some(series) = &mut self.series {
                    series.state = pb::SeriesState::Ended as i32;
                    series.ended_from_date = e.from_date;
                    series.updated_at = e.occurred_at;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn created() -> pb::SeriesCreated {
        pb::SeriesCreated {
            series_id: "x".into(),
            request_id: "r".into(),
            ..Default::default()
        }
    }

    fn end() -> SeriesCommand {
        SeriesCommand::End {
            from_date: Date {
                year: 2026,
                month: 12,
                day: 1,
            },
            cancelled_lesson_ids: vec![],
            reason: String::new(),
            actor: String::new(),
            now: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_retried_create_changes_nothing() {
        given::<SeriesAggregate>([SeriesEvent::Created(created())])
            .when(&SeriesCommand::Create(Box::new(created())))
            .then([]);
    }

    #[test]
    fn a_series_ends_only_once() {
        let ended = {
            let mut state = SeriesAggregate::default();
            state.evolve(&SeriesEvent::Created(created()));
            state.decide(&end()).unwrap_or_default().remove(0)
        };
        given::<SeriesAggregate>([SeriesEvent::Created(created()), ended])
            .when(&end())
            .then_error(SeriesError::AlreadyEnded);
    }
}
