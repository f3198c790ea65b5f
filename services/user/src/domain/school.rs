//! The school aggregate (`school-<school_id>`): several tutors under one roof, run by its admins.
//! Membership is not here: it is the TUTOR and ADMIN grants on the members' user streams.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::timestamp;

repit_platform::proto_events! {
    /// What happens to a school.
    SchoolEvent, SchoolCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Created(SchoolCreated),
        Renamed(SchoolRenamed),
    }
}

/// A school as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchoolAggregate {
    /// `None` until created; `revision` is set by the application.
    pub school: Option<pb::School>,
}

/// What may be asked of a school.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchoolCommand {
    Create {
        school_id: String,
        name: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Renaming to the current name changes nothing.
    Rename {
        name: String,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why a school refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchoolError {
    #[error("school not found")]
    NotFound,
    #[error("the school already exists")]
    AlreadyExists,
}

impl Aggregate for SchoolAggregate {
    type Command = SchoolCommand;
    type Event = SchoolEvent;
    type Error = SchoolError;

    fn decide(&self, command: &SchoolCommand) -> Result<Vec<SchoolEvent>, SchoolError> {
        match command {
            SchoolCommand::Create {
                school_id,
                name,
                actor,
                now,
            } => {
                if self.school.is_some() {
                    return Err(SchoolError::AlreadyExists);
                }
                Ok(vec![SchoolEvent::Created(pb::SchoolCreated {
                    school_id: school_id.clone(),
                    name: name.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            SchoolCommand::Rename { name, actor, now } => {
                let school = self.school.as_ref().ok_or(SchoolError::NotFound)?;
                if school.name == *name {
                    return Ok(vec![]);
                }
                Ok(vec![SchoolEvent::Renamed(pb::SchoolRenamed {
                    school_id: school.school_id.clone(),
                    name: name.clone(),
                    previous_name: school.name.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
        }
    }

    fn evolve(&mut self, event: &SchoolEvent) {
        match event {
            SchoolEvent::Created(e) => {
                self.school = Some(pb::School {
                    school_id: e.school_id.clone(),
                    name: e.name.clone(),
                    created_at: e.occurred_at,
                    revision: 0,
                });
            }
            SchoolEvent::Renamed(e) => {
                if let Some(school) = &mut self.school {
                    school.name.clone_from(&e.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn created() -> SchoolEvent {
        SchoolEvent::Created(pb::SchoolCreated {
            school_id: "s".into(),
            name: "Lyceum".into(),
            actor_user_id: "a".into(),
            occurred_at: Some(timestamp(DateTime::UNIX_EPOCH)),
        })
    }

    fn rename(name: &str) -> SchoolCommand {
        SchoolCommand::Rename {
            name: name.into(),
            actor: "a".into(),
            now: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_school_is_created_once_and_renamed_only_when_the_name_changes() {
        given::<SchoolAggregate>([created()])
            .when(&SchoolCommand::Create {
                school_id: "s".into(),
                name: "Other".into(),
                actor: "a".into(),
                now: DateTime::UNIX_EPOCH,
            })
            .then_error(SchoolError::AlreadyExists);
        given::<SchoolAggregate>([created()])
            .when(&rename("Lyceum"))
            .then([]);
        given::<SchoolAggregate>([created()])
            .when(&rename("Lyceum 2"))
            .then([SchoolEvent::Renamed(pb::SchoolRenamed {
                school_id: "s".into(),
                name: "Lyceum 2".into(),
                previous_name: "Lyceum".into(),
                actor_user_id: "a".into(),
                occurred_at: Some(timestamp(DateTime::UNIX_EPOCH)),
            })]);
        given::<SchoolAggregate>([])
            .when(&rename("x"))
            .then_error(SchoolError::NotFound);
    }
}
