//! The invite-code lookup (`invite-code-<sha256 of the code>`): which invite a code names, so an
//! invite is found by its code without a read model, and no two invites share a code (the claim
//! is appended with "expect no stream", like a login name).

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::timestamp;

repit_platform::proto_events! {
    /// What happens to an invite code's lookup stream.
    InviteCodeEvent, InviteCodeCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Claimed(InviteCodeClaimed),
    }
}

/// The invite a code names (`invite-code-<sha256>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InviteCodeAggregate {
    pub invite_id: Option<String>,
}

/// Claims a code for an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimInviteCode {
    pub code_sha256: String,
    pub invite_id: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// A code names one invite only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the code belongs to another invite")]
pub struct InviteCodeTaken;

impl Aggregate for InviteCodeAggregate {
    type Command = ClaimInviteCode;
    type Event = InviteCodeEvent;
    type Error = InviteCodeTaken;

    fn decide(&self, c: &ClaimInviteCode) -> Result<Vec<InviteCodeEvent>, InviteCodeTaken> {
        match &self.invite_id {
            Some(id) if *id == c.invite_id => Ok(vec![]),
            Some(_) => Err(InviteCodeTaken),
            None => Ok(vec![InviteCodeEvent::Claimed(pb::InviteCodeClaimed {
                code_sha256: c.code_sha256.clone(),
                invite_id: c.invite_id.clone(),
                actor_user_id: c.actor.clone(),
                occurred_at: Some(timestamp(c.now)),
            })]),
        }
    }

    fn evolve(&mut self, event: &InviteCodeEvent) {
        let InviteCodeEvent::Claimed(e) = event;
        self.invite_id = Some(e.invite_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(hours)
    }

    #[test]
    fn a_code_names_one_invite() {
        let claim = |invite: &str| ClaimInviteCode {
            code_sha256: "abc".into(),
            invite_id: invite.into(),
            actor: "t".into(),
            now: at(0),
        };
        let claimed = InviteCodeAggregate::default()
            .decide(&claim("i1"))
            .unwrap_or_default();
        given::<InviteCodeAggregate>(claimed.clone())
            .when(&claim("i2"))
            .then_error(InviteCodeTaken);
        given::<InviteCodeAggregate>(claimed)
            .when(&claim("i1"))
            .then([]);
    }
}
