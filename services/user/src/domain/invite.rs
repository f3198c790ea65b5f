//! The invite aggregate (`invite-<invite_id>`) and its code lookup (`invite-code-<sha256 of the
//! code>`).
//!
//! An invite grants a role in a scope (JOIN) or binds a Telegram id to an account
//! (BIND_TELEGRAM) each time it is redeemed, until it expires, is used up or is revoked. The
//! stream is where the use limit holds: two redemptions racing for the last use append against
//! the same revision, so one of them loses. A redeemer who has redeemed already is answered with
//! no new events, so a retried `/start <code>` costs no use. Expiry is not an event: an invite is
//! expired when it is read after `expires_at`.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to an invite.
    InviteEvent, InviteCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Created(InviteCreated),
        Redeemed(InviteRedeemed),
        UsedUp(InviteUsedUp),
        Revoked(InviteRevoked),
    }
}

/// An invite as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InviteAggregate {
    /// The resource; `None` until created. `status` holds ACTIVE, USED_UP or REVOKED; expiry is
    /// computed when read ([`InviteAggregate::status_at`]).
    pub invite: Option<pb::Invite>,
    /// SHA-256 (lowercase hex) of the code.
    pub code_sha256: String,
    /// Every account that redeemed it, in order.
    pub redeemed_by: Vec<String>,
}

/// A new invite.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateInvite {
    pub invite_id: String,
    pub kind: pb::InviteKind,
    pub code_sha256: String,
    pub role: pb::Role,
    pub tutor_id: String,
    pub school_id: String,
    pub target_user_id: String,
    pub student_id: String,
    pub expires_at: DateTime<Utc>,
    pub max_uses: i32,
    pub note: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// What may be asked of an invite.
#[derive(Clone, Debug, PartialEq)]
pub enum InviteCommand {
    Create(Box<CreateInvite>),
    /// One use by the account `user_id`.
    Redeem {
        user_id: String,
        telegram_user_id: i64,
        account_created: bool,
        actor: String,
        now: DateTime<Utc>,
    },
    Revoke {
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why an invite refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("invite not found")]
    NotFound,
    #[error("the invite already exists")]
    AlreadyExists,
    #[error("the invite has expired")]
    Expired,
    #[error("the invite was revoked")]
    Revoked,
    #[error("the invite has been used up")]
    UsedUp,
}

impl InviteError {
    /// The contract's violation type (user.proto), for FAILED_PRECONDITION.
    pub fn violation(&self) -> Option<&'static str> {
        match self {
            Self::Expired => Some("INVITE_EXPIRED"),
            Self::Revoked => Some("INVITE_REVOKED"),
            Self::UsedUp => Some("INVITE_USED_UP"),
            Self::NotFound | Self::AlreadyExists => None,
        }
    }
}

impl InviteAggregate {
    /// The status as seen at `now` (an active invite past its expiry is EXPIRED).
    pub fn status_at(&self, now: DateTime<Utc>) -> pb::InviteStatus {
        let Some(invite) = &self.invite else {
            return pb::InviteStatus::Unspecified;
        };
        match invite.status() {
            pb::InviteStatus::Active if now >= from_timestamp(invite.expires_at.as_ref()) => {
                pb::InviteStatus::Expired
            }
            status => status,
        }
    }

    /// Why it cannot be redeemed at `now`, if it cannot.
    pub fn refusal_at(&self, now: DateTime<Utc>) -> Option<InviteError> {
        match self.status_at(now) {
            pb::InviteStatus::Active => None,
            pb::InviteStatus::Expired => Some(InviteError::Expired),
            pb::InviteStatus::UsedUp => Some(InviteError::UsedUp),
            pb::InviteStatus::Revoked => Some(InviteError::Revoked),
            pb::InviteStatus::Unspecified => Some(InviteError::NotFound),
        }
    }

    /// The invite as answered at `now`, with its revision.
    pub fn view(&self, now: DateTime<Utc>, revision: Option<u64>) -> Option<pb::Invite> {
        let mut invite = self.invite.clone()?;
        invite.status = self.status_at(now) as i32;
        invite.revision = revision.unwrap_or(0);
        Some(invite)
    }
}

impl Aggregate for InviteAggregate {
    type Command = InviteCommand;
    type Event = InviteEvent;
    type Error = InviteError;

    fn decide(&self, command: &InviteCommand) -> Result<Vec<InviteEvent>, InviteError> {
        match command {
            InviteCommand::Create(c) => {
                if self.invite.is_some() {
                    return Err(InviteError::AlreadyExists);
                }
                Ok(vec![InviteEvent::Created(pb::InviteCreated {
                    invite_id: c.invite_id.clone(),
                    kind: c.kind as i32,
                    code_sha256: c.code_sha256.clone(),
                    role: c.role as i32,
                    tutor_id: c.tutor_id.clone(),
                    school_id: c.school_id.clone(),
                    target_user_id: c.target_user_id.clone(),
                    student_id: c.student_id.clone(),
                    expires_at: Some(timestamp(c.expires_at)),
                    max_uses: c.max_uses,
                    note: c.note.clone(),
                    actor_user_id: c.actor.clone(),
                    occurred_at: Some(timestamp(c.now)),
                })])
            }
            InviteCommand::Redeem {
                user_id,
                telegram_user_id,
                account_created,
                actor,
                now,
            } => {
                let invite = self.invite.as_ref().ok_or(InviteError::NotFound)?;
                if self.redeemed_by.contains(user_id) {
                    return Ok(vec![]);
                }
                if let Some(refusal) = self.refusal_at(*now) {
                    return Err(refusal);
                }
                let use_number = invite.use_count + 1;
                let at = Some(timestamp(*now));
                let mut events = vec![InviteEvent::Redeemed(pb::InviteRedeemed {
                    invite_id: invite.invite_id.clone(),
                    user_id: user_id.clone(),
                    telegram_user_id: *telegram_user_id,
                    account_created: *account_created,
                    use_number,
                    actor_user_id: actor.clone(),
                    occurred_at: at,
                })];
                if use_number >= invite.max_uses {
                    events.push(InviteEvent::UsedUp(pb::InviteUsedUp {
                        invite_id: invite.invite_id.clone(),
                        use_count: use_number,
                        actor_user_id: actor.clone(),
                        occurred_at: at,
                    }));
                }
                Ok(events)
            }
            InviteCommand::Revoke { actor, now } => {
                let invite = self.invite.as_ref().ok_or(InviteError::NotFound)?;
                if self.status_at(*now) != pb::InviteStatus::Active {
                    // Already beyond redemption: nothing to change.
                    return Ok(vec![]);
                }
                Ok(vec![InviteEvent::Revoked(pb::InviteRevoked {
                    invite_id: invite.invite_id.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
        }
    }

    fn evolve(&mut self, event: &InviteEvent) {
        match event {
            InviteEvent::Created(e) => {
                self.code_sha256.clone_from(&e.code_sha256);
                self.invite = Some(pb::Invite {
                    invite_id: e.invite_id.clone(),
                    kind: e.kind,
                    role: e.role,
                    tutor_id: e.tutor_id.clone(),
                    school_id: e.school_id.clone(),
                    target_user_id: e.target_user_id.clone(),
                    student_id: e.student_id.clone(),
                    expires_at: e.expires_at,
                    max_uses: e.max_uses,
                    use_count: 0,
                    status: pb::InviteStatus::Active as i32,
                    note: e.note.clone(),
                    created_by_user_id: e.actor_user_id.clone(),
                    created_at: e.occurred_at,
                    revision: 0,
                });
            }
            InviteEvent::Redeemed(e) => {
                self.redeemed_by.push(e.user_id.clone());
                if let Some(invite) = &mut self.invite {
                    invite.use_count = e.use_number;
                }
            }
            InviteEvent::UsedUp(_) => {
                if let Some(invite) = &mut self.invite {
                    invite.status = pb::InviteStatus::UsedUp as i32;
                }
            }
            InviteEvent::Revoked(_) => {
                if let Some(invite) = &mut self.invite {
                    invite.status = pb::InviteStatus::Revoked as i32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use repit_event_store::aggregate::given;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::hours(hours)
    }

    fn created(max_uses: i32) -> InviteEvent {
        InviteAggregate::default()
            .decide(&InviteCommand::Create(Box::new(CreateInvite {
                invite_id: "i".into(),
                kind: pb::InviteKind::Join,
                code_sha256: "abc".into(),
                role: pb::Role::Student,
                tutor_id: "t".into(),
                school_id: String::new(),
                target_user_id: String::new(),
                student_id: String::new(),
                expires_at: at(24),
                max_uses,
                note: String::new(),
                actor: "t".into(),
                now: at(0),
            })))
            .unwrap_or_default()
            .remove(0)
    }

    fn redeem(user: &str, hours: i64) -> InviteCommand {
        InviteCommand::Redeem {
            user_id: user.into(),
            telegram_user_id: 42,
            account_created: false,
            actor: user.into(),
            now: at(hours),
        }
    }

    fn redeemed(user: &str, use_number: i32) -> InviteEvent {
        InviteEvent::Redeemed(pb::InviteRedeemed {
            invite_id: "i".into(),
            user_id: user.into(),
            telegram_user_id: 42,
            account_created: false,
            use_number,
            actor_user_id: user.into(),
            occurred_at: Some(timestamp(at(1))),
        })
    }

    #[test]
    fn the_last_use_redeems_and_uses_the_invite_up_and_a_further_one_is_refused() {
        given::<InviteAggregate>([created(2), redeemed("a", 1)])
            .when(&redeem("b", 1))
            .then([
                redeemed("b", 2),
                InviteEvent::UsedUp(pb::InviteUsedUp {
                    invite_id: "i".into(),
                    use_count: 2,
                    actor_user_id: "b".into(),
                    occurred_at: Some(timestamp(at(1))),
                }),
            ]);
        let used_up = InviteEvent::UsedUp(pb::InviteUsedUp::default());
        given::<InviteAggregate>([created(2), redeemed("a", 1), redeemed("b", 2), used_up])
            .when(&redeem("c", 1))
            .then_error(InviteError::UsedUp);
    }

    #[test]
    fn a_redeemer_who_redeemed_already_uses_nothing_even_when_it_is_used_up_or_expired() {
        let used_up = InviteEvent::UsedUp(pb::InviteUsedUp::default());
        given::<InviteAggregate>([created(1), redeemed("a", 1), used_up])
            .when(&redeem("a", 48))
            .then([]);
    }

    #[test]
    fn an_expired_invite_is_refused_and_reads_as_expired() {
        given::<InviteAggregate>([created(5)])
            .when(&redeem("a", 24))
            .then_error(InviteError::Expired);
        let mut state = InviteAggregate::default();
        state.evolve(&created(5));
        assert_eq!(state.status_at(at(23)), pb::InviteStatus::Active);
        assert_eq!(state.status_at(at(25)), pb::InviteStatus::Expired);
    }

    #[test]
    fn a_revoked_invite_is_refused_and_revoking_again_changes_nothing() {
        let revoked = InviteEvent::Revoked(pb::InviteRevoked {
            invite_id: "i".into(),
            actor_user_id: "t".into(),
            occurred_at: Some(timestamp(at(1))),
        });
        given::<InviteAggregate>([created(5)])
            .when(&InviteCommand::Revoke {
                actor: "t".into(),
                now: at(1),
            })
            .then([revoked.clone()]);
        given::<InviteAggregate>([created(5), revoked.clone()])
            .when(&redeem("a", 2))
            .then_error(InviteError::Revoked);
        given::<InviteAggregate>([created(5), revoked])
            .when(&InviteCommand::Revoke {
                actor: "t".into(),
                now: at(2),
            })
            .then([]);
    }

    #[test]
    fn an_unknown_invite_cannot_be_redeemed() {
        given::<InviteAggregate>([])
            .when(&redeem("a", 1))
            .then_error(InviteError::NotFound);
    }
}
