//! The session aggregate (`session-<session_id>`): one family of rotating refresh tokens.
//!
//! Each refresh exchanges the current token for the next; presenting a token that was already
//! exchanged means it was stolen or the client raced, and ends the whole family
//! (`RefreshTokenReuseDetected` + `RefreshTokenFamilyRevoked` in one append), so a thief's token
//! and the owner's alike stop working. Tokens appear only as SHA-256.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to a session.
    SessionEvent, SessionCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Issued(RefreshTokenFamilyIssued),
        Rotated(RefreshTokenRotated),
        ReuseDetected(RefreshTokenReuseDetected),
        Revoked(RefreshTokenFamilyRevoked),
    }
}

/// A session as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionAggregate {
    pub session_id: String,
    pub user_id: String,
    pub sign_in_method: i32,
    pub client_name: String,
    /// The token that may be exchanged now, its generation and expiry.
    pub current_sha256: String,
    pub generation: u32,
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Every earlier token of the family, with its generation: presenting one is reuse.
    pub rotated: Vec<(String, u32)>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub session_expires_at: Option<DateTime<Utc>>,
    /// Why it ended, once it has.
    pub ended: Option<pb::SessionEndReason>,
}

/// What may be asked of a session.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionCommand {
    /// A login starts the family with its first token.
    Start {
        session_id: String,
        user_id: String,
        sign_in_method: pb::SignInMethod,
        client_name: String,
        token_sha256: String,
        token_expires_at: DateTime<Utc>,
        session_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// Exchange `presented_sha256` for `next_sha256`. `dead_before`: the user logged out
    /// everywhere (or changed the password) at this instant, so sessions started earlier are over.
    Refresh {
        presented_sha256: String,
        next_sha256: String,
        next_expires_at: DateTime<Utc>,
        dead_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    },
    /// End the family.
    End {
        reason: pb::SessionEndReason,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why a refresh was refused. Callers answer all of them alike (UNAUTHENTICATED, one message),
/// so a client learns nothing about which case it hit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("unknown session")]
    Unknown,
    #[error("the session has ended")]
    Ended,
    #[error("the refresh token has expired")]
    Expired,
    #[error("the refresh token does not belong to this session")]
    UnknownToken,
    #[error("the session already exists")]
    AlreadyStarted,
}

impl SessionAggregate {
    /// Whether the family can still refresh at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.ended.is_none()
            && !self.session_id.is_empty()
            && self.session_expires_at.is_some_and(|end| now < end)
    }
}

impl Aggregate for SessionAggregate {
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;

    fn decide(&self, command: &SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                sign_in_method,
                client_name,
                token_sha256,
                token_expires_at,
                session_expires_at,
                now,
            } => {
                if !self.session_id.is_empty() {
                    return Err(SessionError::AlreadyStarted);
                }
                Ok(vec![SessionEvent::Issued(pb::RefreshTokenFamilyIssued {
                    session_id: session_id.clone(),
                    user_id: user_id.clone(),
                    sign_in_method: *sign_in_method as i32,
                    client_name: client_name.clone(),
                    refresh_token_sha256: token_sha256.clone(),
                    refresh_token_expires_at: Some(timestamp(*token_expires_at)),
                    session_expires_at: Some(timestamp(*session_expires_at)),
                    actor_user_id: user_id.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            SessionCommand::Refresh {
                presented_sha256,
                next_sha256,
                next_expires_at,
                dead_before,
                now,
            } => {
                if self.session_id.is_empty() {
                    return Err(SessionError::Unknown);
                }
                if self.ended.is_some() {
                    return Err(SessionError::Ended);
                }
                if let Some((_, reused_generation)) =
                    self.rotated.iter().find(|(sha, _)| sha == presented_sha256)
                {
                    // Reuse: end the whole family, whoever presented it.
                    return Ok(vec![
                        SessionEvent::ReuseDetected(pb::RefreshTokenReuseDetected {
                            session_id: self.session_id.clone(),
                            user_id: self.user_id.clone(),
                            reused_refresh_token_sha256: presented_sha256.clone(),
                            reused_generation: *reused_generation,
                            current_generation: self.generation,
                            actor_user_id: String::new(),
                            occurred_at: Some(timestamp(*now)),
                        }),
                        self.revoked(pb::SessionEndReason::ReuseDetected, "", *now),
                    ]);
                }
                if *presented_sha256 != self.current_sha256 {
                    return Err(SessionError::UnknownToken);
                }
                if dead_before.is_some_and(|at| self.started_at.is_none_or(|s| s < at)) {
                    return Err(SessionError::Ended);
                }
                if self.token_expires_at.is_none_or(|at| *now >= at) || !self.is_live(*now) {
                    return Err(SessionError::Expired);
                }
                // A rotation never outlives the session's absolute end.
                let expires = self
                    .session_expires_at
                    .map_or(*next_expires_at, |end| end.min(*next_expires_at));
                Ok(vec![SessionEvent::Rotated(pb::RefreshTokenRotated {
                    session_id: self.session_id.clone(),
                    user_id: self.user_id.clone(),
                    previous_refresh_token_sha256: presented_sha256.clone(),
                    refresh_token_sha256: next_sha256.clone(),
                    generation: self.generation + 1,
                    refresh_token_expires_at: Some(timestamp(expires)),
                    actor_user_id: self.user_id.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            SessionCommand::End { reason, actor, now } => {
                if self.session_id.is_empty() {
                    return Err(SessionError::Unknown);
                }
                if self.ended.is_some() {
                    return Ok(vec![]); // Ending an ended session is OK and changes nothing.
                }
                Ok(vec![self.revoked(*reason, actor, *now)])
            }
        }
    }

    fn evolve(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Issued(e) => {
                self.session_id.clone_from(&e.session_id);
                self.user_id.clone_from(&e.user_id);
                self.sign_in_method = e.sign_in_method;
                self.client_name.clone_from(&e.client_name);
                self.current_sha256.clone_from(&e.refresh_token_sha256);
                self.generation = 1;
                self.token_expires_at = Some(from_timestamp(e.refresh_token_expires_at.as_ref()));
                self.session_expires_at = Some(from_timestamp(e.session_expires_at.as_ref()));
                self.started_at = Some(from_timestamp(e.occurred_at.as_ref()));
                self.last_refreshed_at = self.started_at;
            }
            SessionEvent::Rotated(e) => {
                let previous =
                    std::mem::replace(&mut self.current_sha256, e.refresh_token_sha256.clone());
                self.rotated.push((previous, self.generation));
                self.generation = e.generation;
                self.token_expires_at = Some(from_timestamp(e.refresh_token_expires_at.as_ref()));
                self.last_refreshed_at = Some(from_timestamp(e.occurred_at.as_ref()));
            }
            SessionEvent::ReuseDetected(_) => {}
            SessionEvent::Revoked(e) => self.ended = Some(e.reason()),
        }
    }
}

impl SessionAggregate {
    fn revoked(
        &self,
        reason: pb::SessionEndReason,
        actor: &str,
        now: DateTime<Utc>,
    ) -> SessionEvent {
        SessionEvent::Revoked(pb::RefreshTokenFamilyRevoked {
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            reason: reason as i32,
            actor_user_id: actor.to_owned(),
            occurred_at: Some(timestamp(now)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use repit_event_store::aggregate::given;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + TimeDelta::minutes(minutes)
    }

    fn started() -> SessionEvent {
        SessionEvent::Issued(pb::RefreshTokenFamilyIssued {
            session_id: "s".into(),
            user_id: "u".into(),
            sign_in_method: pb::SignInMethod::Password as i32,
            client_name: "web".into(),
            refresh_token_sha256: "t1".into(),
            refresh_token_expires_at: Some(timestamp(at(60 * 24 * 30))),
            session_expires_at: Some(timestamp(at(60 * 24 * 90))),
            actor_user_id: "u".into(),
            occurred_at: Some(timestamp(at(0))),
        })
    }

    fn refresh(presented: &str, next: &str, now: i64) -> SessionCommand {
        SessionCommand::Refresh {
            presented_sha256: presented.into(),
            next_sha256: next.into(),
            next_expires_at: at(now + 60 * 24 * 30),
            dead_before: None,
            now: at(now),
        }
    }

    fn rotated() -> SessionEvent {
        let mut state = SessionAggregate::default();
        state.evolve(&started());
        state
            .decide(&refresh("t1", "t2", 10))
            .unwrap_or_default()
            .remove(0)
    }

    #[test]
    fn a_refresh_rotates_the_token_and_counts_the_generation() {
        let SessionEvent::Rotated(event) = rotated() else {
            panic!("a rotation")
        };
        assert_eq!(event.generation, 2);
        assert_eq!(event.previous_refresh_token_sha256, "t1");
    }

    #[test]
    fn presenting_a_rotated_token_again_revokes_the_whole_family() {
        let result = given::<SessionAggregate>([started(), rotated()])
            .when(&refresh("t1", "t3", 20))
            .into_result();
        let Ok(events) = result else {
            panic!("{result:?}")
        };
        assert!(matches!(
            events.as_slice(),
            [SessionEvent::ReuseDetected(_), SessionEvent::Revoked(r)]
                if r.reason() == pb::SessionEndReason::ReuseDetected
        ));
        // And afterwards even the current token is dead.
        let mut state = SessionAggregate::default();
        for e in [started(), rotated()].iter().chain(events.iter()) {
            state.evolve(e);
        }
        assert_eq!(
            state.decide(&refresh("t2", "t4", 30)),
            Err(SessionError::Ended)
        );
    }

    #[test]
    fn a_session_older_than_logout_everywhere_cannot_refresh() {
        given::<SessionAggregate>([started()])
            .when(&SessionCommand::Refresh {
                presented_sha256: "t1".into(),
                next_sha256: "t2".into(),
                next_expires_at: at(100),
                dead_before: Some(at(5)),
                now: at(10),
            })
            .then_error(SessionError::Ended);
    }

    #[test]
    fn an_unknown_token_and_an_expired_one_are_refused() {
        given::<SessionAggregate>([started()])
            .when(&refresh("other", "t2", 10))
            .then_error(SessionError::UnknownToken);
        given::<SessionAggregate>([started()])
            .when(&refresh("t1", "t2", 60 * 24 * 31))
            .then_error(SessionError::Expired);
    }

    #[test]
    fn ending_an_ended_session_changes_nothing() {
        let end = |minutes| SessionCommand::End {
            reason: pb::SessionEndReason::Logout,
            actor: "u".into(),
            now: at(minutes),
        };
        let mut state = SessionAggregate::default();
        state.evolve(&started());
        let ended = state.decide(&end(1)).unwrap_or_default().remove(0);
        given::<SessionAggregate>([started(), ended])
            .when(&end(2))
            .then([]);
    }
}
