//! Load shedding: when the calls in flight reach the concurrency limit, a new call is refused at
//! once with RESOURCE_EXHAUSTED (OVERLOADED) instead of waiting in a queue until its deadline
//! passes; the caller learns immediately and can back off or try another instance.
//!
//! A call counts from its arrival until its answer starts (headers): that is when it holds the
//! upstream's and this process's resources. An open server stream (a `Watch…`) is no longer
//! counted once it started, so long-lived watchers cannot starve short calls.
//! `GetLoadStatus` is never shed, so an operator can look while the gateway is overloaded.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tower::{Layer, Service};

use crate::errors;

/// The path that is never shed.
pub const LOAD_STATUS_PATH: &str = "/repit.gateway.v1.GatewayService/GetLoadStatus";

/// The in-flight count, the limit, and how much was shed.
#[derive(Debug)]
pub struct LoadMeter {
    limit: u32,
    in_flight: AtomicU32,
    shed_total: AtomicU64,
    // Shed calls per second of the last minute: (second since start, count), touched only when
    // shedding, so the fast path is two atomic operations.
    recent: Mutex<[(u64, u64); 60]>,
    started: Instant,
}

impl LoadMeter {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            in_flight: AtomicU32::new(0),
            shed_total: AtomicU64::new(0),
            recent: Mutex::new([(u64::MAX, 0); 60]),
            started: Instant::now(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn shed_total(&self) -> u64 {
        self.shed_total.load(Ordering::Relaxed)
    }

    /// Calls shed in the last 60 seconds.
    pub fn shed_last_minute(&self) -> u64 {
        let now = self.started.elapsed().as_secs();
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now.saturating_sub(*second) < 60)
            .map(|(_, count)| count)
            .sum()
    }

    /// Whether calls were shed in the last second.
    pub fn shedding(&self) -> bool {
        let now = self.started.elapsed().as_secs();
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .iter()
            .any(|(second, count)| *count > 0 && (*second == now || *second + 1 == now))
    }

    /// A slot for one call, or `None` when the limit is reached (the call is counted as shed).
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shed_total.fetch_add(1, Ordering::Relaxed);
            let second = self.started.elapsed().as_secs();
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = &mut recent[(second % 60) as usize];
            if slot.0 != second {
                *slot = (second, 0);
            }
            slot.1 += 1;
            return None;
        }
        Some(InFlight(Arc::clone(self)))
    }
}

/// One call's slot; released when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<LoadMeter>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sheds load; see the module documentation.
#[derive(Clone, Debug)]
pub struct LoadShedLayer {
    meter: Arc<LoadMeter>,
}

impl LoadShedLayer {
    pub fn new(meter: Arc<LoadMeter>) -> Self {
        Self { meter }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            meter: Arc::clone(&self.meter),
        }
    }
}

/// See [`LoadShedLayer`].
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    meter: Arc<LoadMeter>,
}

/// The future of [`LoadShed`].
pub type LoadShedFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Service<http::Request<Body>> for LoadShed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = LoadShedFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == LOAD_STATUS_PATH {
            return Box::pin(self.inner.call(request));
        }
        let Some(slot) = self.meter.try_acquire() else {
            tracing::debug!(
                method = request.uri().path(),
                "call shed: too many in flight"
            );
            let response = errors::response(&errors::overloaded());
            return Box::pin(async move { Ok(response) });
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let answered = future.await;
            drop(slot);
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_over_the_limit_are_refused_and_counted_until_a_slot_frees() {
        let meter = Arc::new(LoadMeter::new(2));
        let first = meter.try_acquire().expect("first");
        let _second = meter.try_acquire().expect("second");
        assert!(meter.try_acquire().is_none());
        assert!(meter.try_acquire().is_none());
        assert_eq!(meter.in_flight(), 2);
        assert_eq!(meter.shed_total(), 2);
        assert_eq!(meter.shed_last_minute(), 2);
        assert!(meter.shedding());
        drop(first);
        assert_eq!(meter.in_flight(), 1);
        assert!(meter.try_acquire().is_some());
    }
}
