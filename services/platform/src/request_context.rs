//! Who and what caused the work a request does: its correlation id (`x-request-id`, made up when
//! absent), the W3C `traceparent` it came with, and (once identity exists) the acting user.
//!
//! [`RequestContextLayer`] reads them from the gRPC metadata and makes them the ambient
//! [`RequestContext`] of the request's future (a tokio task-local, like a tracing span), so the
//! application layer can stamp every event it appends (DESIGN.md: event metadata carries
//! correlation id, causation id, actor and traceparent) without threading a parameter through
//! every call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The request id header: echoed into every event's correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// What caused the current work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// Shared by everything one original request caused.
    pub correlation_id: String,
    /// The request or event that directly caused this work.
    pub causation_id: String,
    /// The acting user; empty for the system.
    pub actor_user_id: String,
    /// W3C trace context, empty when the caller sent none (or a malformed one).
    pub traceparent: String,
}

impl RequestContext {
    /// The context of an incoming request: its `x-request-id` (or a fresh UUIDv7) and its
    /// `traceparent` when well-formed.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        let traceparent = headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_traceparent(v))
            .unwrap_or_default()
            .to_owned();
        Self {
            correlation_id: request_id.clone(),
            causation_id: request_id,
            actor_user_id: String::new(),
            traceparent,
        }
    }

    /// The ambient context, if the current task runs inside [`RequestContext::scope`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as the ambient context.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

/// `version-traceid-parentid-flags` with lowercase hex of the right lengths, not all zeros.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Makes each request's [`RequestContext`] ambient for its handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner }
    }
}

/// See [`RequestContextLayer`].
#[derive(Clone, Debug)]
pub struct RequestContextService<S> {
    inner: S,
}

/// Mounted under the wrapped service's name.
impl<S: tonic::server::NamedService> tonic::server::NamedService for RequestContextService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for RequestContextService<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let context = RequestContext::from_headers(request.headers());
        let future = self.inner.call(request);
        Box::pin(context.scope(future))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_is_kept_and_a_bad_one_dropped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT_HEADER,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("req-1"));
        let context = RequestContext::from_headers(&headers);
        assert_eq!(context.correlation_id, "req-1");
        assert!(context.traceparent.starts_with("00-4bf92f35"));
        headers.insert(
            TRACEPARENT_HEADER,
            http::HeaderValue::from_static("00-zz-00-01"),
        );
        assert!(
            RequestContext::from_headers(&headers)
                .traceparent
                .is_empty()
        );
    }

    #[test]
    fn a_request_without_an_id_gets_a_fresh_one() {
        let context = RequestContext::from_headers(&http::HeaderMap::new());
        assert_eq!(context.correlation_id.len(), 36);
    }

    #[tokio::test]
    async fn the_context_is_ambient_inside_its_scope_only() {
        assert!(RequestContext::current().is_none());
        let context = RequestContext {
            correlation_id: "c".into(),
            ..RequestContext::default()
        };
        let seen = context
            .clone()
            .scope(async { RequestContext::current() })
            .await;
        assert_eq!(seen, Some(context));
    }
}
