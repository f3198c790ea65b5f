//! The login-name aggregate (`login-email-<sha256 of the normalised email>`,
//! `login-telegram-<telegram user id>`): one stream per login name, so two accounts can never
//! claim the same email or Telegram id, however concurrent their sign-ups.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::timestamp;

repit_platform::proto_events! {
    /// What happens to a login name.
    LoginNameEvent, LoginNameCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        EmailClaimed(EmailClaimed),
        EmailReleased(EmailReleased),
        TelegramClaimed(TelegramIdClaimed),
        TelegramReleased(TelegramIdReleased),
    }
}

/// Who holds a login name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginNameAggregate {
    /// The account holding it; `None` when free.
    pub holder: Option<String>,
}

/// What may be asked of a login name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginNameCommand {
    ClaimEmail {
        email: String,
        user_id: String,
        now: DateTime<Utc>,
    },
    ReleaseEmail {
        email: String,
        user_id: String,
        now: DateTime<Utc>,
    },
    ClaimTelegram {
        telegram_user_id: i64,
        user_id: String,
        actor: String,
        now: DateTime<Utc>,
    },
    ReleaseTelegram {
        telegram_user_id: i64,
        user_id: String,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why a login name refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginNameError {
    #[error("the login name belongs to another account")]
    Taken,
}

impl Aggregate for LoginNameAggregate {
    type Command = LoginNameCommand;
    type Event = LoginNameEvent;
    type Error = LoginNameError;

    fn decide(&self, command: &LoginNameCommand) -> Result<Vec<LoginNameEvent>, LoginNameError> {
        match command {
            LoginNameCommand::ClaimEmail {
                email,
                user_id,
                now,
            } => match &self.holder {
                Some(holder) if holder == user_id => Ok(vec![]),
                Some(_) => Err(LoginNameError::Taken),
                None => Ok(vec![LoginNameEvent::EmailClaimed(pb::EmailClaimed {
                    email: email.clone(),
                    user_id: user_id.clone(),
                    actor_user_id: user_id.clone(),
                    occurred_at: Some(timestamp(*now)),
                })]),
            },
            LoginNameCommand::ReleaseEmail {
                email,
                user_id,
                now,
            } => match &self.holder {
                Some(holder) if holder == user_id => {
                    Ok(vec![LoginNameEvent::EmailReleased(pb::EmailReleased {
                        email: email.clone(),
                        user_id: user_id.clone(),
                        actor_user_id: user_id.clone(),
                        occurred_at: Some(timestamp(*now)),
                    })])
                }
                _ => Ok(vec![]),
            },
            LoginNameCommand::ClaimTelegram {
                telegram_user_id,
                user_id,
                actor,
                now,
            } => match &self.holder {
                Some(holder) if holder == user_id => Ok(vec![]),
                Some(_) => Err(LoginNameError::Taken),
                None => Ok(vec![LoginNameEvent::TelegramClaimed(
                    pb::TelegramIdClaimed {
                        telegram_user_id: *telegram_user_id,
                        user_id: user_id.clone(),
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    },
                )]),
            },
            LoginNameCommand::ReleaseTelegram {
                telegram_user_id,
                user_id,
                actor,
                now,
            } => match &self.holder {
                Some(holder) if holder == user_id => Ok(vec![LoginNameEvent::TelegramReleased(
                    pb::TelegramIdReleased {
                        telegram_user_id: *telegram_user_id,
                        user_id: user_id.clone(),
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    },
                )]),
                _ => Ok(vec![]),
            },
        }
    }

    fn evolve(&mut self, event: &LoginNameEvent) {
        match event {
            LoginNameEvent::EmailClaimed(e) => self.holder = Some(e.user_id.clone()),
            LoginNameEvent::TelegramClaimed(e) => self.holder = Some(e.user_id.clone()),
            LoginNameEvent::EmailReleased(_) | LoginNameEvent::TelegramReleased(_) => {
                self.holder = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn claim(user: &str) -> LoginNameCommand {
        LoginNameCommand::ClaimEmail {
            email: "a@b.c".into(),
            user_id: user.into(),
            now: DateTime::UNIX_EPOCH,
        }
    }

    fn claimed(user: &str) -> LoginNameEvent {
        LoginNameAggregate::default()
            .decide(&claim(user))
            .unwrap_or_default()
            .remove(0)
    }

    #[test]
    fn an_email_is_held_by_one_account_only() {
        given::<LoginNameAggregate>([claimed("u1")])
            .when(&claim("u2"))
            .then_error(LoginNameError::Taken);
        given::<LoginNameAggregate>([claimed("u1")])
            .when(&claim("u1"))
            .then([]);
    }

    #[test]
    fn a_released_email_can_be_claimed_again() {
        let released = LoginNameEvent::EmailReleased(pb::EmailReleased {
            email: "a@b.c".into(),
            user_id: "u1".into(),
            ..Default::default()
        });
        given::<LoginNameAggregate>([claimed("u1"), released])
            .when(&claim("u2"))
            .then([claimed("u2")]);
    }

    #[test]
    fn a_telegram_id_is_held_by_one_account_until_released() {
        let claim = |user: &str| LoginNameCommand::ClaimTelegram {
            telegram_user_id: 42,
            user_id: user.into(),
            actor: user.into(),
            now: DateTime::UNIX_EPOCH,
        };
        let held = LoginNameAggregate::default()
            .decide(&claim("u1"))
            .unwrap_or_default();
        given::<LoginNameAggregate>(held.clone())
            .when(&claim("u2"))
            .then_error(LoginNameError::Taken);
        let release = LoginNameCommand::ReleaseTelegram {
            telegram_user_id: 42,
            user_id: "u1".into(),
            actor: "u1".into(),
            now: DateTime::UNIX_EPOCH,
        };
        let mut state = LoginNameAggregate::default();
        held.iter().for_each(|e| state.evolve(e));
        let released = state.decide(&release).unwrap_or_default();
        released.iter().for_each(|e| state.evolve(e));
        assert_eq!(state.holder, None);
        assert!(state.decide(&claim("u2")).is_ok_and(|e| e.len() == 1));
    }
}
