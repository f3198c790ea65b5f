//! Per-caller rate limits: a token bucket per user id (per client address for anonymous calls),
//! kept as one number per caller (the generic cell rate algorithm's "theoretical arrival time"),
//! in 16 mutex-guarded shards so concurrent calls rarely meet on one lock.
//!
//! Memory is bounded: at most `max_tracked_callers` entries (about 100 bytes each). A caller whose
//! bucket is full again needs no entry, so a full shard first forgets those; if every tracked
//! caller is still active, one arbitrary entry is dropped (that caller starts over with a full
//! bucket). Load shedding, not the limiter, protects the process from a flood of new addresses.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::Utc;
use repit_platform::auth::{Caller, Verifier, bearer_token};
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::errors;

const SHARDS: usize = 16;

/// Response headers that tell every caller its quota.
pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
pub const RESET_HEADER: &str = "x-ratelimit-reset";

/// The one policy every call draws from (gateway.proto `RateLimitQuota.policy`).
pub const DEFAULT_POLICY: &str = "default";

/// A token bucket's shape: `burst` calls at once, `refill_tokens` more per `refill_period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub burst: u32,
    pub refill_tokens: u32,
    pub refill_period: Duration,
}

impl Policy {
    /// Nanoseconds per token (at least 1).
    fn interval(&self) -> u64 {
        let nanos = self.refill_period.as_nanos() / u128::from(self.refill_tokens.max(1));
        u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
    }
}

/// Whom a call is counted for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    User(Box<str>),
    Address(IpAddr),
    /// No user and no address (an in-memory transport): shares one bucket.
    Unknown,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(id) => write!(f, "user:{id}"),
            Subject::Address(ip) => write!(f, "address:{ip}"),
            Subject::Unknown => f.write_str("address:unknown"),
        }
    }
}

/// The outcome of counting one call, with the bucket's state after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub subject: String,
    pub policy: Policy,
    pub allowed: bool,
    /// Tokens left after this call.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub full_in: Duration,
    /// Until the next call can succeed (zero while tokens remain).
    pub retry_after: Duration,
}

/// Sharded token buckets; see the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    policy: Policy,
    shards: Box<[Mutex<HashMap<Subject, u64>>]>,
    per_shard: usize,
    hasher: RandomState,
    epoch: Instant,
}

impl RateLimiter {
    pub fn new(policy: Policy, max_tracked_callers: usize) -> Self {
        Self {
            policy,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_tracked_callers / SHARDS).max(1),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Callers tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Takes one token from `subject`'s bucket at `now`, if it has one.
    pub fn check(&self, subject: &Subject, now: Instant) -> Quota {
        let interval = self.policy.interval();
        let capacity = interval.saturating_mul(u64::from(self.policy.burst));
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        // Shard by a keyed hash, so callers cannot aim at one shard.
        let index = (self.hasher.hash_one(subject) as usize) % SHARDS;
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // "Theoretical arrival time": when the bucket would be full again. Absent = full now.
        let tat = shard.get(subject).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(interval);
        let quota = |allowed: bool, tat_after: u64| {
            let used = tat_after - now;
            Quota {
                subject: subject.to_string(),
                policy: self.policy,
                allowed,
                remaining: u32::try_from(capacity.saturating_sub(used) / interval)
                    .unwrap_or(u32::MAX),
                full_in: Duration::from_nanos(used),
                retry_after: Duration::from_nanos(
                    (tat_after + interval)
                        .saturating_sub(capacity)
                        .saturating_sub(now),
                ),
            }
        };
        if next - now > capacity {
            return quota(false, tat);
        }
        if !shard.contains_key(subject) && shard.len() >= self.per_shard {
            shard.retain(|_, full_at| *full_at > now);
            if shard.len() >= self.per_shard
                && let Some(evicted) = shard.keys().next().cloned()
            {
                shard.remove(&evicted);
            }
        }
        shard.insert(subject.clone(), next);
        quota(true, next)
    }
}

/// Counts every call against its caller's bucket; see the module documentation.
///
/// The caller is the [`Caller`] an [`repit_platform::auth::AuthLayer`] further out put into the
/// request, else the user of a valid bearer token (when a verifier is given: in-process, where
/// no edge layer refuses calls), else the client address. The call's [`Quota`] goes into the
/// request extensions (for `GetRateLimitQuota`) and the response headers.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
    verifier: Option<Arc<Verifier>>,
}

impl RateLimitLayer {
    /// Without a limiter, calls pass uncounted (rate limits switched off).
    pub fn new(limiter: Option<Arc<RateLimiter>>, verifier: Option<Arc<Verifier>>) -> Self {
        Self { limiter, verifier }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
    verifier: Option<Arc<Verifier>>,
}

/// The future of [`RateLimit`].
pub type RateLimitFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

/// Whom `request` is counted for.
pub fn subject_of(request: &http::Request<Body>, verifier: Option<&Verifier>) -> Subject {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return Subject::User(caller.user_id.as_str().into());
    }
    if let Some(verifier) = verifier
        && let Ok(caller) =
            bearer_token(request.headers()).and_then(|token| verifier.verify(token, Utc::now()))
    {
        return Subject::User(caller.user_id.into());
    }
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map_or(Subject::Unknown, |addr| Subject::Address(addr.ip()))
}

fn set_headers(headers: &mut http::HeaderMap, quota: &Quota) {
    let pairs = [
        (LIMIT_HEADER, quota.policy.burst.to_string()),
        (REMAINING_HEADER, quota.remaining.to_string()),
        (RESET_HEADER, quota.full_in.as_secs_f64().ceil().to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

impl<S> Service<http::Request<Body>> for RateLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Some(limiter) = &self.limiter else {
            return Box::pin(self.inner.call(request));
        };
        let subject = subject_of(&request, self.verifier.as_deref());
        let quota = limiter.check(&subject, Instant::now());
        if !quota.allowed {
            tracing::debug!(subject = %subject, method = request.uri().path(), "call refused: rate limited");
            let mut response =
                errors::response(&errors::rate_limited(&quota.subject, quota.retry_after));
            set_headers(response.headers_mut(), &quota);
            return Box::pin(async move { Ok(response) });
        }
        request.extensions_mut().insert(quota.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            set_headers(response.headers_mut(), &quota);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(burst: u32, refill_tokens: u32, period_ms: u64) -> Policy {
        Policy {
            burst,
            refill_tokens,
            refill_period: Duration::from_millis(period_ms),
        }
    }

    fn user(id: &str) -> Subject {
        Subject::User(id.into())
    }

    #[test]
    fn a_caller_gets_its_burst_then_waits_for_the_refill() {
        let limiter = RateLimiter::new(policy(3, 1, 1000), 1000);
        let start = Instant::now();
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                let quota = limiter.check(&user("a"), start);
                assert!(quota.allowed);
                quota.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check(&user("a"), start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.full_in, Duration::from_secs(3));
        // Half a period later: still nothing; a full period later: one token.
        assert!(
            !limiter
                .check(&user("a"), start + Duration::from_millis(500))
                .allowed
        );
        let later = limiter.check(&user("a"), start + Duration::from_millis(1000));
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn callers_do_not_share_buckets() {
        let limiter = RateLimiter::new(policy(1, 1, 60_000), 1000);
        let now = Instant::now();
        assert!(limiter.check(&user("a"), now).allowed);
        assert!(!limiter.check(&user("a"), now).allowed);
        assert!(limiter.check(&user("b"), now).allowed);
        let address = Subject::Address(IpAddr::from([127, 0, 0, 1]));
        assert!(limiter.check(&address, now).allowed);
        assert_eq!(address.to_string(), "address:127.0.0.1");
        assert_eq!(user("b").to_string(), "user:b");
    }

    #[test]
    fn a_quiet_caller_refills_to_the_burst_and_no_further() {
        let limiter = RateLimiter::new(policy(2, 10, 1000), 1000);
        let start = Instant::now();
        assert!(limiter.check(&user("a"), start).allowed);
        let after_an_hour = limiter.check(&user("a"), start + Duration::from_secs(3600));
        assert_eq!(after_an_hour.remaining, 1);
    }

    #[test]
    fn an_entry_is_small() {
        // What bounds memory per tracked caller: the map entry (the hash table adds a control
        // byte and up to 1/8 free slots), plus a user id's heap string (36 bytes for a UUID).
        assert!(std::mem::size_of::<(Subject, u64)>() <= 32);
    }

    #[test]
    fn memory_stays_bounded_however_many_callers_come() {
        let limiter = RateLimiter::new(policy(5, 1, 60_000), 64);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(limiter.check(&Subject::Address(ip), now).allowed);
        }
        assert!(limiter.tracked() <= 64, "{}", limiter.tracked());
        // Callers whose buckets refilled are forgotten first.
        let later = now + Duration::from_secs(3600);
        assert!(limiter.check(&user("late"), later).allowed);
    }

    #[test]
    fn concurrent_callers_never_get_more_than_their_burst() {
        let limiter = Arc::new(RateLimiter::new(policy(100, 1, 3_600_000), 1000));
        let now = Instant::now();
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = Arc::clone(&limiter);
                    scope.spawn(move || {
                        (0..100)
                            .filter(|_| limiter.check(&user("a"), now).allowed)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(allowed, 100);
    }
}
