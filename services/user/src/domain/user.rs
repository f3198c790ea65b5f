//! The user aggregate (`user-<user_id>`): one account — credentials, Telegram binding, roles,
//! parent links, profile, sessions' cut-off, deactivation.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to an account.
    UserEvent, UserCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Registered(UserRegistered),
        TelegramBound(TelegramBound),
        TelegramUnbound(TelegramUnbound),
        TelegramUsernameChanged(TelegramUsernameChanged),
        RoleGranted(RoleGranted),
        RoleRevoked(RoleRevoked),
        ParentLinked(ParentLinked),
        ParentUnlinked(ParentUnlinked),
        ProfileChanged(ProfileChanged),
        EmailChanged(EmailChanged),
        PasswordChanged(PasswordChanged),
        LoggedOutEverywhere(LoggedOutEverywhere),
        Deactivated(UserDeactivated),
        Reactivated(UserReactivated),
    }
}

/// An account as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserAggregate {
    /// The resource; `None` until registered.
    pub user: Option<pb::User>,
    /// argon2id PHC string; empty without a password.
    pub password_hash: String,
    /// Sessions started before this instant are over (log out everywhere, password change).
    pub sessions_dead_before: Option<DateTime<Utc>>,
    /// The request that registered it, to recognise a retried sign-up.
    pub request_id: String,
}

/// A new tutor account.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterTutor {
    pub user_id: String,
    pub display_name: String,
    pub email: String,
    pub password_hash: String,
    pub time_zone: String,
    pub language: Language,
    pub now: DateTime<Utc>,
}

/// What may be asked of an account.
#[derive(Clone, Debug, PartialEq)]
pub enum UserCommand {
    RegisterTutor(Box<RegisterTutor>),
    LogoutEverywhere {
        actor: String,
        now: DateTime<Utc>,
    },
    /// Changes the fields that are `Some`.
    ChangeProfile {
        display_name: Option<String>,
        time_zone: Option<String>,
        language: Option<Language>,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why an account refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user not found")]
    NotFound,
    #[error("the account already exists")]
    AlreadyExists,
}

impl UserAggregate {
    /// Whether the account may log in and refresh.
    pub fn is_active(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.status() == pb::UserStatus::Active)
    }
}

impl Aggregate for UserAggregate {
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;

    fn decide(&self, command: &UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::RegisterTutor(c) => {
                if self.user.is_some() {
                    return Err(UserError::AlreadyExists);
                }
                let at = Some(timestamp(c.now));
                Ok(vec![
                    UserEvent::Registered(pb::UserRegistered {
                        user_id: c.user_id.clone(),
                        method: pb::RegistrationMethod::SignUp as i32,
                        display_name: c.display_name.clone(),
                        email: c.email.clone(),
                        password_hash: c.password_hash.clone(),
                        telegram_user_id: 0,
                        telegram_username: String::new(),
                        time_zone: c.time_zone.clone(),
                        language: c.language as i32,
                        invite_id: String::new(),
                        actor_user_id: c.user_id.clone(),
                        occurred_at: at,
                    }),
                    UserEvent::RoleGranted(pb::RoleGranted {
                        user_id: c.user_id.clone(),
                        role: pb::Role::Tutor as i32,
                        tutor_id: String::new(),
                        school_id: String::new(),
                        invite_id: String::new(),
                        actor_user_id: c.user_id.clone(),
                        occurred_at: at,
                    }),
                ])
            }
            UserCommand::ChangeProfile {
                display_name,
                time_zone,
                language,
                actor,
                now,
            } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                let mut changed = Vec::new();
                let display_name = match display_name {
                    Some(name) if *name != user.display_name => {
                        changed.push("display_name".to_owned());
                        name.clone()
                    }
                    _ => user.display_name.clone(),
                };
                let time_zone = match time_zone {
                    Some(zone) if *zone != user.time_zone => {
                        changed.push("time_zone".to_owned());
                        zone.clone()
                    }
                    _ => user.time_zone.clone(),
                };
                let language = match language {
                    Some(language) if *language as i32 != user.language => {
                        changed.push("language".to_owned());
                        *language as i32
                    }
                    _ => user.language,
                };
                if changed.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileChanged(pb::ProfileChanged {
                    user_id: user.user_id.clone(),
                    display_name,
                    time_zone,
                    language,
                    changed_fields: Some(prost_types::FieldMask { paths: changed }),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::LogoutEverywhere { actor, now } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                Ok(vec![UserEvent::LoggedOutEverywhere(
                    pb::LoggedOutEverywhere {
                        user_id: user.user_id.clone(),
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    },
                )])
            }
        }
    }

    fn evolve(&mut self, event: &UserEvent) {
        let Some(user) = &mut self.user else {
            if let UserEvent::Registered(e) = event {
                self.password_hash.clone_from(&e.password_hash);
                self.user = Some(pb::User {
                    user_id: e.user_id.clone(),
                    display_name: e.display_name.clone(),
                    email: e.email.clone(),
                    has_password: !e.password_hash.is_empty(),
                    telegram_user_id: e.telegram_user_id,
                    telegram_username: e.telegram_username.clone(),
                    time_zone: e.time_zone.clone(),
                    language: e.language,
                    status: pb::UserStatus::Active as i32,
                    roles: vec![],
                    parent_ids: vec![],
                    child_ids: vec![],
                    created_at: e.occurred_at,
                    revision: 0,
                });
            }
            return;
        };
        match event {
            UserEvent::Registered(_) => {}
            UserEvent::TelegramBound(e) => {
                user.telegram_user_id = e.telegram_user_id;
                user.telegram_username.clone_from(&e.telegram_username);
            }
            UserEvent::TelegramUnbound(_) => {
                user.telegram_user_id = 0;
                user.telegram_username.clear();
            }
            UserEvent::TelegramUsernameChanged(e) => {
                user.telegram_username.clone_from(&e.telegram_username);
            }
            UserEvent::RoleGranted(e) => {
                let grant = pb::RoleGrant {
                    role: e.role,
                    tutor_id: e.tutor_id.clone(),
                    school_id: e.school_id.clone(),
                    granted_at: e.occurred_at,
                };
                if !user.roles.iter().any(|g| {
                    g.role == grant.role
                        && g.tutor_id == grant.tutor_id
                        && g.school_id == grant.school_id
                }) {
                    user.roles.push(grant);
                }
            }
            UserEvent::RoleRevoked(e) => user.roles.retain(|g| {
                !(g.role == e.role && g.tutor_id == e.tutor_id && g.school_id == e.school_id)
            }),
            UserEvent::ParentLinked(e) => {
                if e.student_id == user.user_id && !user.parent_ids.contains(&e.parent_id) {
                    user.parent_ids.push(e.parent_id.clone());
                }
            }
            UserEvent::ParentUnlinked(e) => user.parent_ids.retain(|p| *p != e.parent_id),
            UserEvent::ProfileChanged(e) => {
                user.display_name.clone_from(&e.display_name);
                user.time_zone.clone_from(&e.time_zone);
                user.language = e.language;
            }
            UserEvent::EmailChanged(e) => user.email.clone_from(&e.email),
            UserEvent::PasswordChanged(e) => {
                self.password_hash.clone_from(&e.password_hash);
                user.has_password = !e.password_hash.is_empty();
                self.sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
            }
            UserEvent::LoggedOutEverywhere(e) => {
                self.sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
            }
            UserEvent::Deactivated(_) => user.status = pb::UserStatus::Deactivated as i32,
            UserEvent::Reactivated(_) => user.status = pb::UserStatus::Active as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn register() -> UserCommand {
        UserCommand::RegisterTutor(Box::new(RegisterTutor {
            user_id: "u".into(),
            display_name: "Anna".into(),
            email: "anna@example.com".into(),
            password_hash: "$argon2id$...".into(),
            time_zone: "Europe/Moscow".into(),
            language: Language::Ru,
            now: DateTime::UNIX_EPOCH,
        }))
    }

    #[test]
    fn a_tutor_registers_with_the_tutor_role_of_their_own_practice() {
        let events = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        let mut state = UserAggregate::default();
        events.iter().for_each(|e| state.evolve(e));
        assert!(state.is_active());
        let user = state.user.expect("registered");
        assert_eq!(user.roles.len(), 1);
        assert_eq!(user.roles[0].role(), pb::Role::Tutor);
        assert!(user.has_password && state.password_hash.starts_with("$argon2id$"));
    }

    #[test]
    fn an_account_registers_once() {
        let events = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        given::<UserAggregate>(events)
            .when(&register())
            .then_error(UserError::AlreadyExists);
    }

    #[test]
    fn a_profile_change_names_only_what_changed_and_an_unchanged_one_writes_nothing() {
        let registered = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        let change = |zone: &str| UserCommand::ChangeProfile {
            display_name: Some("Anna".into()),
            time_zone: Some(zone.into()),
            language: None,
            actor: "u".into(),
            now: DateTime::UNIX_EPOCH,
        };
        let result = given::<UserAggregate>(registered.clone())
            .when(&change("Asia/Tokyo"))
            .into_result();
        let Ok(events) = result else {
            panic!("{result:?}")
        };
        let [UserEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(
            e.changed_fields.as_ref().map(|m| m.paths.clone()),
            Some(vec!["time_zone".to_owned()])
        );
        given::<UserAggregate>(registered)
            .when(&change("Europe/Moscow"))
            .then([]);
    }

    #[test]
    fn logging_out_everywhere_sets_the_sessions_cut_off() {
        let mut state = UserAggregate::default();
        for e in state.decide(&register()).unwrap_or_default() {
            state.evolve(&e);
        }
        let later = DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(1);
        for e in state
            .decide(&UserCommand::LogoutEverywhere {
                actor: "u".into(),
                now: later,
            })
            .unwrap_or_default()
        {
            state.evolve(&e);
        }
        assert_eq!(state.sessions_dead_before, Some(later));
    }
}
