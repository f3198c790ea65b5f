//! Deadlines at the edge: a call without `grpc-timeout` gets the default deadline, a longer one
//! is cut to the maximum, and the upstream sees the effective value in `grpc-timeout`, so every
//! hop works to the same deadline. When it passes before the answer starts, the caller gets
//! DEADLINE_EXCEEDED from here, whatever the upstream is doing.
//!
//! Streaming `Watch…`, `Upload…` and `Download…` methods are exempt (gateway.proto,
//! `Route.max_deadline`: server-streaming and file-transfer methods): a watch runs until the caller
//! or shutdown ends it, and an upload's answer starts only once the last byte arrived, so they get
//! neither the default nor the cap, only the caller's own deadline. Every streaming method of the
//! contracts is named this way (except `ExportReportCsv`, whose answer starts at once, so a cap on
//! the answer's start does not cut it), which is why a name rule suffices.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tower::{Layer, Service};

use crate::errors;

/// The `grpc-timeout` request header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The deadline policy of the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadlinePolicy {
    /// For calls that set none.
    pub default: Duration,
    /// Longer deadlines are cut to this.
    pub max: Duration,
}

impl DeadlinePolicy {
    /// The deadline a call to `path` runs under, given the one its caller asked for (`None`:
    /// no deadline at all, only for exempt methods without a caller deadline).
    pub fn effective(&self, path: &str, requested: Option<Duration>) -> Option<Duration> {
        if is_exempt(path) {
            return requested;
        }
        Some(requested.map_or(self.default, |asked| asked.min(self.max)))
    }
}

/// Watches and file transfers, which may outlive any fixed deadline.
fn is_exempt(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|method| {
        EXEMPT_PREFIXES
            .iter()
            .any(|prefix| method.starts_with(prefix))
    })
}

/// Method name prefixes of the streaming methods exempt from the default and the cap.
const EXEMPT_PREFIXES: [&str; 3] = ["Watch", "Upload", "Download"];

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats `deadline` for `grpc-timeout`, in the finest unit that fits in 8 digits (rounding up,
/// so the upstream never gets less time than the gateway waits).
pub fn format_grpc_timeout(deadline: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = deadline.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let amount = nanos.div_ceil(size);
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{MAX}H")
}

/// Applies [`DeadlinePolicy`]; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    policy: DeadlinePolicy,
}

impl DeadlineLayer {
    pub fn new(policy: DeadlinePolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            policy: self.policy,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    policy: DeadlinePolicy,
}

/// The future of [`Deadline`].
pub type DeadlineFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Deadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let requested = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = self.policy.effective(request.uri().path(), requested);
        if let Some(deadline) = deadline
            && let Ok(value) = http::HeaderValue::from_str(&format_grpc_timeout(deadline))
        {
            request.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        let future = self.inner.call(request);
        match deadline {
            None => Box::pin(future),
            Some(deadline) => Box::pin(async move {
                match tokio::time::timeout(deadline, future).await {
                    Ok(answered) => answered,
                    Err(_) => Ok(errors::response(&errors::deadline_exceeded(deadline))),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: DeadlinePolicy = DeadlinePolicy {
        default: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };

    #[test]
    fn a_call_without_a_deadline_gets_the_default_and_a_longer_one_is_capped() {
        let path = "/repit.lesson.v1.LessonService/GetLesson";
        assert_eq!(POLICY.effective(path, None), Some(Duration::from_secs(10)));
        assert_eq!(
            POLICY.effective(path, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            POLICY.effective(path, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn watches_and_file_transfers_keep_the_callers_deadline_or_none() {
        let path = "/repit.lesson.v1.LessonService/WatchSchedule";
        assert_eq!(POLICY.effective(path, None), None);
        assert_eq!(
            POLICY.effective(
                "/repit.material.v1.MaterialService/UploadMaterialFile",
                None
            ),
            None
        );
        assert_eq!(
            POLICY.effective(path, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn grpc_timeout_values_parse_and_format_back() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100n"), Some(Duration::from_nanos(100)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5s"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("-5S"), None);
        for deadline in [
            Duration::from_nanos(7),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(300),
            Duration::from_secs(86_400 * 365),
        ] {
            let formatted = format_grpc_timeout(deadline);
            let parsed = parse_grpc_timeout(&formatted).expect("parses");
            assert!(parsed >= deadline, "{formatted}");
            assert!(parsed - deadline < deadline / 1_000_000 + Duration::from_nanos(1));
        }
        assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500000u");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_later_than_the_deadline_is_deadline_exceeded() {
        let slow = tower::service_fn(|_request: http::Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut service = DeadlineLayer::new(POLICY).layer(slow);
        let request = http::Request::builder()
            .uri("/repit.lesson.v1.LessonService/GetLesson")
            .body(Body::empty())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn the_upstream_sees_the_effective_deadline() {
        let echo = tower::service_fn(|request: http::Request<Body>| async move {
            let seen = request.headers().get(GRPC_TIMEOUT).cloned();
            let mut response = http::Response::new(Body::empty());
            if let Some(seen) = seen {
                response.headers_mut().insert("seen", seen);
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = DeadlineLayer::new(POLICY).layer(echo);
        let request = http::Request::builder()
            .uri("/repit.lesson.v1.LessonService/GetLesson")
            .header(GRPC_TIMEOUT, "1H")
            .body(Body::empty())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        let seen = response.headers().get("seen").expect("forwarded");
        assert_eq!(
            parse_grpc_timeout(seen.to_str().expect("ascii")),
            Some(POLICY.max)
        );
    }
}
