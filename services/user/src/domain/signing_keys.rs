//! The signing-key ring (`signing-keys`, one stream): which keys sign access tokens, which still
//! verify, and since when. Private keys arrive sealed (AES-256-GCM under a key-encryption key from
//! configuration), so the stream never holds one in the clear; sealing is the application's job.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to the key ring.
    SigningKeyEvent, SigningKeyCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Rotated(SigningKeyRotated),
        Revoked(SigningKeyRevoked),
    }
}

/// One key of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingKey {
    pub kid: String,
    pub public_key_spki_der: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub sealing_key_id: String,
    /// When it starts signing (and tokens it signs are valid from).
    pub activates_at: DateTime<Utc>,
    /// When verifiers stop accepting it; `None` while it is the newest key.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The ring as its stream tells it, oldest key first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningKeyRing {
    pub keys: Vec<RingKey>,
}

impl SigningKeyRing {
    /// The key that signs at `now`: the newest one already active.
    pub fn signing_key(&self, now: DateTime<Utc>) -> Option<&RingKey> {
        self.keys.iter().rev().find(|k| k.activates_at <= now)
    }

    /// Every key a token may verify with at `now` (active, scheduled, or retired within grace).
    pub fn verifying_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &RingKey> {
        self.keys
            .iter()
            .filter(move |k| k.expires_at.is_none_or(|end| now < end))
    }
}

/// A new key for the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    pub kid: String,
    pub public_key_spki_der: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub sealing_key_id: String,
}

/// What may be asked of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningKeyCommand {
    /// The first key, active at once (a fresh installation).
    Bootstrap { key: NewKey, now: DateTime<Utc> },
    /// A new key that activates after `activation_delay`; the previous one verifies for
    /// `previous_grace` after that, or is dropped at once with `revoke_previous`.
    Rotate {
        key: NewKey,
        activation_delay: chrono::TimeDelta,
        previous_grace: chrono::TimeDelta,
        revoke_previous: bool,
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why the ring refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("a key generated earlier is not active yet")]
    RotationInProgress,
    #[error("the ring already has a key")]
    AlreadyBootstrapped,
}

impl Aggregate for SigningKeyRing {
    type Command = SigningKeyCommand;
    type Event = SigningKeyEvent;
    type Error = SigningKeyError;

    fn decide(&self, command: &SigningKeyCommand) -> Result<Vec<SigningKeyEvent>, SigningKeyError> {
        let rotated = |key: &NewKey,
                       activates_at: DateTime<Utc>,
                       previous: Option<(&RingKey, Option<DateTime<Utc>>)>,
                       actor: &str,
                       now: DateTime<Utc>| {
            SigningKeyEvent::Rotated(pb::SigningKeyRotated {
                kid: key.kid.clone(),
                algorithm: pb::SigningAlgorithm::Ed25519 as i32,
                public_key_spki_der: key.public_key_spki_der.clone(),
                sealed_private_key: key.sealed_private_key.clone(),
                sealing_key_id: key.sealing_key_id.clone(),
                activates_at: Some(timestamp(activates_at)),
                previous_kid: previous.map(|(k, _)| k.kid.clone()).unwrap_or_default(),
                previous_key_expires_at: previous.and_then(|(_, end)| end).map(timestamp),
                actor_user_id: actor.to_owned(),
                occurred_at: Some(timestamp(now)),
            })
        };
        match command {
            SigningKeyCommand::Bootstrap { key, now } => {
                if !self.keys.is_empty() {
                    return Err(SigningKeyError::AlreadyBootstrapped);
                }
                Ok(vec![rotated(key, *now, None, "", *now)])
            }
            SigningKeyCommand::Rotate {
                key,
                activation_delay,
                previous_grace,
                revoke_previous,
                actor,
                now,
            } => {
                let newest = self.keys.last();
                if !revoke_previous && newest.is_some_and(|k| k.activates_at > *now) {
                    return Err(SigningKeyError::RotationInProgress);
                }
                let activates_at = if *revoke_previous {
                    *now
                } else {
                    *now + *activation_delay
                };
                let previous_end = (!revoke_previous).then_some(activates_at + *previous_grace);
                let mut events = vec![rotated(
                    key,
                    activates_at,
                    newest.map(|k| (k, previous_end)),
                    actor,
                    *now,
                )];
                if let (true, Some(previous)) = (*revoke_previous, newest) {
                    events.push(SigningKeyEvent::Revoked(pb::SigningKeyRevoked {
                        kid: previous.kid.clone(),
                        reason: "revoked on rotation".to_owned(),
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    }));
                }
                Ok(events)
            }
        }
    }

    fn evolve(&mut self, event: &SigningKeyEvent) {
        match event {
            SigningKeyEvent::Rotated(e) => {
                if let Some(previous) = self.keys.iter_mut().find(|k| k.kid == e.previous_kid) {
                    previous.expires_at = e
                        .previous_key_expires_at
                        .as_ref()
                        .map(|t| from_timestamp(Some(t)));
                }
                self.keys.push(RingKey {
                    kid: e.kid.clone(),
                    public_key_spki_der: e.public_key_spki_der.clone(),
                    sealed_private_key: e.sealed_private_key.clone(),
                    sealing_key_id: e.sealing_key_id.clone(),
                    activates_at: from_timestamp(e.activates_at.as_ref()),
                    expires_at: None,
                });
            }
            SigningKeyEvent::Revoked(e) => self.keys.retain(|k| k.kid != e.kid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn key(kid: &str) -> NewKey {
        NewKey {
            kid: kid.into(),
            public_key_spki_der: vec![1],
            sealed_private_key: vec![2],
            sealing_key_id: "kek-1".into(),
        }
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::minutes(minutes)
    }

    fn apply(
        ring: &mut SigningKeyRing,
        command: &SigningKeyCommand,
    ) -> Result<(), SigningKeyError> {
        for event in ring.decide(command)? {
            ring.evolve(&event);
        }
        Ok(())
    }

    fn rotate(kid: &str, revoke: bool, now: i64) -> SigningKeyCommand {
        SigningKeyCommand::Rotate {
            key: key(kid),
            activation_delay: TimeDelta::minutes(10),
            previous_grace: TimeDelta::minutes(15),
            revoke_previous: revoke,
            actor: "admin".into(),
            now: at(now),
        }
    }

    #[test]
    fn a_rotated_key_signs_after_its_delay_and_the_old_one_verifies_through_the_grace() {
        let mut ring = SigningKeyRing::default();
        apply(
            &mut ring,
            &SigningKeyCommand::Bootstrap {
                key: key("k1"),
                now: at(0),
            },
        )
        .expect("bootstrap");
        apply(&mut ring, &rotate("k2", false, 60)).expect("rotate");
        assert_eq!(ring.signing_key(at(65)).map(|k| k.kid.as_str()), Some("k1"));
        assert_eq!(ring.signing_key(at(70)).map(|k| k.kid.as_str()), Some("k2"));
        let verifying = |m| {
            ring.verifying_keys(at(m))
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(verifying(80), ["k1", "k2"]);
        assert_eq!(verifying(86), ["k2"]);
        assert_eq!(
            ring.decide(&rotate("k3", false, 65)),
            Err(SigningKeyError::RotationInProgress)
        );
    }

    #[test]
    fn revoking_the_previous_key_drops_it_at_once_and_activates_the_new_one() {
        let mut ring = SigningKeyRing::default();
        apply(
            &mut ring,
            &SigningKeyCommand::Bootstrap {
                key: key("k1"),
                now: at(0),
            },
        )
        .expect("bootstrap");
        apply(&mut ring, &rotate("k2", true, 60)).expect("rotate");
        assert_eq!(ring.signing_key(at(60)).map(|k| k.kid.as_str()), Some("k2"));
        assert_eq!(ring.verifying_keys(at(60)).count(), 1);
    }
}
