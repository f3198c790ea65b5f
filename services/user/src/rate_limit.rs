//! Rate limits of the public RPCs (login, sign-up, refresh, invites): a token bucket per key
//! (a client address, or an account identifier such as an email hash or a Telegram id).
//!
//! Every attempt takes a token whether the account exists or not, so the limit itself reveals
//! nothing about accounts; a successful login gives its account token back (the contract limits
//! repeated failures), which tells the caller nothing they did not just prove. The table is bounded: when it is full,
//! buckets that have refilled completely (they remember nothing) are dropped first, then the
//! stalest, so a flood of fresh addresses cannot grow memory without limit.
//!
//! Not `governor`: the two limits need per-key buckets with a bounded table and a retry delay to
//! put into RetryInfo, which is a few dozen lines here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most keys one limiter remembers.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A keyed token bucket: `burst` attempts at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; `Err(wait)` when there is none, with how long until
    /// there is.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / self.per_second).max(0.001),
            ))
        }
    }

    /// Gives back the token an attempt took (a login that succeeded: only failures count).
    pub fn refund(&self, key: &str) {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_second);
        buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
        if buckets.len() >= MAX_KEYS {
            // Everyone is active: forget the stalest tenth.
            let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 10];
            buckets.retain(|_, b| b.updated > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_key_waits_for_the_refill_and_other_keys_do_not() {
        let limiter = RateLimiter::new(3, 60);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", start), Ok(()));
        }
        let wait = limiter.check("a", start).expect_err("limited");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert_eq!(limiter.check("b", start), Ok(()));
        assert_eq!(limiter.check("a", start + Duration::from_secs(1)), Ok(()));
        limiter.refund("a");
        assert_eq!(limiter.check("a", start + Duration::from_secs(1)), Ok(()));
        assert!(limiter.check("a", start + Duration::from_secs(1)).is_err());
    }
}
