//! Verifying access tokens (every service's side), with a cache so a repeated token costs a hash
//! and a map lookup instead of an Ed25519 verification.
//!
//! A client sends the same token with every call for its whole lifetime (minutes), so nearly all
//! verifications repeat one already done. The cache is keyed by the SHA-256 of the token (a
//! collision-resistant hash: a hit means the very same bytes were verified before, and no token
//! is kept in memory), holds the verified [`Caller`], and forgets an entry when the token
//! expires, when its key retires, and when the key set is replaced (rotation, revocation).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::claims::{Caller, Claims};
use super::issuer::MAX_ACCESS_TOKEN_LIFETIME;
use super::jws;
use super::keys::KeySet;

/// How far the verifier's clock may disagree with the issuer's for `exp`, `nbf` and `iat`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(30);
/// How many verified tokens are remembered by default (a few MiB at most).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Longer tokens are refused before any work: ours are well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

const LEEWAY: TimeDelta = TimeDelta::seconds(CLOCK_LEEWAY.as_secs() as i64);
/// Independent locks, so concurrent requests on many cores rarely meet on one.
const SHARDS: usize = 16;

/// Why a token was refused. Every variant is answered UNAUTHENTICATED (TOKEN_INVALID); the
/// messages are safe to show a client and say nothing about keys or internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    #[error("no access token")]
    Missing,
    #[error("malformed access token")]
    Malformed,
    #[error("access token signed with an unsupported algorithm")]
    Algorithm,
    #[error("access token signed by an unknown or retired key")]
    UnknownKey,
    #[error("access token signature does not verify")]
    Signature,
    #[error("access token expired")]
    Expired,
    #[error("access token not valid yet")]
    NotYetValid,
    #[error("access token from another issuer")]
    Issuer,
    #[error("access token for another audience")]
    Audience,
}

impl TokenError {
    /// A stable snake_case name, for logs and the ErrorInfo metadata.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
        }
    }
}

/// Checks access tokens against one issuer, one audience and a replaceable [`KeySet`].
pub struct Verifier {
    issuer: String,
    audience: String,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped on every key set replacement; cache entries of an older generation are dead. Kept
    /// apart from `keys` so that a cache hit reads one atomic instead of taking the lock.
    generation: AtomicU64,
    cache: Cache,
    /// Told when a token names a key id the set lacks: a key source that fetches the set from
    /// elsewhere uses it to fetch early after a rotation (and rate-limits it itself).
    on_unknown_key: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<String> = self.keys().iter().map(|k| k.kid().to_owned()).collect();
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &kids)
            .field("cached_tokens", &self.cached_tokens())
            .finish()
    }
}

impl Verifier {
    /// A verifier with a cache of [`DEFAULT_CACHE_CAPACITY`] tokens.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: KeySet) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys: RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(0),
            cache: Cache::new(DEFAULT_CACHE_CAPACITY),
            on_unknown_key: std::sync::OnceLock::new(),
        }
    }

    /// Calls `notify` whenever a token names a key id the set in force lacks (set once; later
    /// calls are ignored). It runs on the request's task: it must only signal, never block.
    pub fn on_unknown_key(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_unknown_key.set(Box::new(notify));
    }

    /// The same verifier remembering about `capacity` tokens; 0 turns the cache off.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = Cache::new(capacity);
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The key set in force.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `keys` in force (a fresh `GetPublicKeys` answer) and forgets every cached token, so
    /// a key dropped from the set stops verifying at once, even for tokens seen before.
    pub fn replace_keys(&self, keys: KeySet) {
        {
            let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            *current = Arc::new(keys);
            // Under the write lock: a verification that read the old set also read the old
            // generation, so whatever it caches is dead on arrival.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.cache.clear();
    }

    /// How many verified tokens are remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The caller `token` speaks for, if it is valid at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, TokenError> {
        if !self.cache.enabled() {
            return self.check(token, now).map(|verified| verified.caller);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(caller) = self.cache.get(&digest, generation, now) {
            return Ok(caller);
        }
        let verified = self.check(token, now)?;
        let caller = verified.caller.clone();
        self.cache.insert(digest, verified, now);
        Ok(caller)
    }

    /// Every claim of `token` if it is valid at `now`, bypassing the cache (for the rare caller
    /// that needs `jti` or `amr`, such as the user service itself).
    pub fn verify_claims(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        self.check(token, now).map(|verified| verified.claims)
    }

    /// The full check; the cache stores its result.
    fn check(&self, token: &str, now: DateTime<Utc>) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let parts = jws::split(token).ok_or(TokenError::Malformed)?;
        let header: jws::Header = jws::decode(parts.header)
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        // The algorithm is ours to choose, never the token's: anything but EdDSA is refused
        // before a key is even looked up.
        if header.alg != jws::ALG {
            return Err(TokenError::Algorithm);
        }
        if !header.is_access_token() || header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let (keys, generation) = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            (Arc::clone(&keys), self.generation.load(Ordering::Acquire))
        };
        let Some(key) = header.kid.as_deref().and_then(|kid| keys.get(kid)) else {
            if let Some(notify) = self.on_unknown_key.get() {
                notify();
            }
            return Err(TokenError::UnknownKey);
        };
        let signature: [u8; 64] = jws::decode(parts.signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TokenError::Signature)?;
        if !key.verifies(parts.signing_input.as_bytes(), &signature) {
            return Err(TokenError::Signature);
        }

        // Signed by a key we trust: from here on the payload is the issuer's word.
        let claims: Claims = jws::decode(parts.payload)
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if claims.sub.is_empty() || claims.sid.is_empty() {
            return Err(TokenError::Malformed);
        }
        let instant = |seconds: i64| DateTime::from_timestamp(seconds, 0);
        let (Some(iat), Some(nbf), Some(exp)) = (
            instant(claims.iat),
            instant(claims.nbf),
            instant(claims.exp),
        ) else {
            return Err(TokenError::Malformed);
        };
        // Our issuer never signs a longer one, and revocation (sessions, roles) relies on the
        // bound: a token claiming more is not one of ours to trust.
        let max_lifetime = TimeDelta::from_std(MAX_ACCESS_TOKEN_LIFETIME).unwrap_or(TimeDelta::MAX);
        if exp <= iat || exp - iat > max_lifetime {
            return Err(TokenError::Malformed);
        }
        let (Some(valid_from), Some(valid_until)) = (
            nbf.max(iat).checked_sub_signed(LEEWAY),
            exp.checked_add_signed(LEEWAY),
        ) else {
            return Err(TokenError::Malformed);
        };
        if now >= valid_until {
            return Err(TokenError::Expired);
        }
        if now < valid_from {
            return Err(TokenError::NotYetValid);
        }
        // The key's window: it vouches only for tokens issued since it became valid, and only
        // until it retires.
        if iat < key.not_before() || !key.is_live_at(now) {
            return Err(TokenError::UnknownKey);
        }
        let caller = Caller::from_claims(&claims).ok_or(TokenError::Malformed)?;
        Ok(Verified {
            generation,
            valid_from,
            valid_until: key
                .expires_at()
                .map_or(valid_until, |retired| retired.min(valid_until)),
            caller,
            claims,
        })
    }
}

/// A token that passed [`Verifier::check`], and how long that stays true.
struct Verified {
    generation: u64,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    caller: Caller,
    claims: Claims,
}

struct Entry {
    generation: u64,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    caller: Caller,
}

impl Entry {
    fn is_live(&self, generation: u64, now: DateTime<Utc>) -> bool {
        self.generation == generation && self.valid_from <= now && now < self.valid_until
    }
}

/// Token digest (SHA-256) to what verifying that token established.
type Shard = RwLock<HashMap<[u8; 32], Entry>>;

/// Sharded map of token digests to verified callers, bounded by evicting dead entries first and
/// then arbitrary ones (a hash map's iteration order is as good as random here).
struct Cache {
    shards: Box<[Shard]>,
    per_shard: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards = (0..if per_shard == 0 { 0 } else { SHARDS })
            .map(|_| RwLock::new(HashMap::new()))
            .collect();
        Self { shards, per_shard }
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, digest: &[u8; 32]) -> &Shard {
        &self.shards[usize::from(digest[0]) % self.shards.len()]
    }

    fn get(&self, digest: &[u8; 32], generation: u64, now: DateTime<Utc>) -> Option<Caller> {
        let shard = self
            .shard(digest)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(digest)
            .filter(|entry| entry.is_live(generation, now))
            .map(|entry| entry.caller.clone())
    }

    fn insert(&self, digest: [u8; 32], verified: Verified, now: DateTime<Utc>) {
        let mut shard = self
            .shard(&digest)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            let generation = verified.generation;
            shard.retain(|_, entry| entry.generation == generation && now < entry.valid_until);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            digest,
            Entry {
                generation: verified.generation,
                valid_from: verified.valid_from,
                valid_until: verified.valid_until,
                caller: verified.caller,
            },
        );
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::{Role, RoleClaim};
    use crate::auth::issuer::{Subject, TokenIssuer};
    use crate::auth::keys::SigningKey;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("instant")
    }

    fn token(key: &SigningKey, user: &str, now: DateTime<Utc>) -> String {
        let issuer =
            TokenIssuer::new("repit-user", "repit", Duration::from_secs(600)).expect("issuer");
        let subject = Subject {
            user_id: user.into(),
            session_id: "s".into(),
            roles: vec![RoleClaim::new(Role::Tutor)],
            children: Vec::new(),
            amr: vec!["pwd".into()],
            auth_time: now,
            time_zone: String::new(),
        };
        issuer.issue(key, &subject, now).expect("issued").token
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_still_answers() {
        let key = SigningKey::generate("k", t0()).expect("key");
        let keys = KeySet::new([key.verifying()]).expect("set");
        let verifier = Verifier::new("repit-user", "repit", keys).with_cache_capacity(32);
        for i in 0..200 {
            let token = token(&key, &format!("u-{i}"), t0());
            assert!(verifier.verify(&token, t0()).is_ok());
        }
        assert!(
            verifier.cached_tokens() <= 32,
            "{}",
            verifier.cached_tokens()
        );
        assert!(verifier.cached_tokens() >= 16);
    }

    #[test]
    fn a_cached_token_still_expires_and_its_retired_key_still_stops_it() {
        let key = SigningKey::generate("k", t0()).expect("key");
        let retires = t0() + TimeDelta::minutes(5);
        let keys = KeySet::new([key
            .verifying()
            .with_expires_at(Some(retires))
            .expect("window")])
        .expect("set");
        let verifier = Verifier::new("repit-user", "repit", keys);
        let token = token(&key, "u", t0());
        assert!(verifier.verify(&token, t0()).is_ok());
        assert_eq!(verifier.cached_tokens(), 1);
        assert_eq!(
            verifier.verify(&token, retires).err(),
            Some(TokenError::UnknownKey)
        );
        assert_eq!(
            verifier
                .verify(&token, t0() + TimeDelta::seconds(631))
                .err(),
            Some(TokenError::Expired)
        );
    }

    #[test]
    fn without_a_cache_every_call_checks_the_signature() {
        let key = SigningKey::generate("k", t0()).expect("key");
        let keys = KeySet::new([key.verifying()]).expect("set");
        let verifier = Verifier::new("repit-user", "repit", keys).with_cache_capacity(0);
        let token = token(&key, "u", t0());
        assert_eq!(
            verifier.verify(&token, t0()).map(|c| c.user_id).ok(),
            Some("u".into())
        );
        assert_eq!(verifier.cached_tokens(), 0);
        assert_eq!(
            verifier.verify(&"a".repeat(MAX_TOKEN_LEN + 1), t0()).err(),
            Some(TokenError::Malformed)
        );
    }

    #[test]
    fn every_error_has_a_lowercase_message_and_a_code() {
        use TokenError::*;
        for error in [
            Missing,
            Malformed,
            Algorithm,
            UnknownKey,
            Signature,
            Expired,
            NotYetValid,
            Issuer,
            Audience,
        ] {
            let message = error.to_string();
            assert_eq!(message, message.to_lowercase());
            assert!(!error.code().is_empty());
        }
    }
}
