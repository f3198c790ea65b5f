//! The proxy: a call whose service an upstream serves is forwarded over that upstream's HTTP/2
//! channel with its body streaming both ways (unary, client, server and bidirectional streaming
//! alike: the gateway never buffers or decodes messages); any other call goes to the services
//! mounted in this process. [`RouteCheckLayer`] answers UNIMPLEMENTED for a service nobody
//! serves, early, before authentication and limits spend anything on it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

use crate::deadline::{GRPC_TIMEOUT, parse_grpc_timeout};
use crate::errors;
use crate::route::{RouteTable, Upstream};

/// Connection-specific headers that HTTP/2 forbids or that describe the caller's hop only.
const HOP_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "te",
];

/// Routes each call to its upstream or to the wrapped local services.
#[derive(Clone, Debug)]
pub struct ProxyLayer {
    table: Arc<RouteTable>,
}

impl ProxyLayer {
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for ProxyLayer {
    type Service = Proxy<S>;

    fn layer(&self, local: S) -> Self::Service {
        Proxy {
            local,
            table: Arc::clone(&self.table),
        }
    }
}

/// See [`ProxyLayer`].
#[derive(Clone, Debug)]
pub struct Proxy<S> {
    local: S,
    table: Arc<RouteTable>,
}

/// The future of [`Proxy`].
pub type ProxyFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for Proxy<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per destination; each call waits for its own (oneshot below).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.table.upstream_for(request.uri().path()) {
            Some(upstream) => Box::pin(forward(Arc::clone(upstream), request)),
            None => {
                let local = self.local.clone();
                Box::pin(local.oneshot(request))
            }
        }
    }
}

/// Sends `request` to `upstream` and hands back its answer, body still streaming.
pub async fn forward(
    upstream: Arc<Upstream>,
    mut request: http::Request<Body>,
) -> Result<http::Response<Body>, Infallible> {
    let headers = request.headers_mut();
    for name in HOP_HEADERS {
        headers.remove(name);
    }
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let deadline = headers
        .get(GRPC_TIMEOUT)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or_default();
    let _call = upstream.enter();
    match upstream.channel().oneshot(request).await {
        Ok(response) => {
            upstream.record(Ok(()));
            Ok(response)
        }
        Err(error) if timed_out(&error) => {
            // The channel enforces the `grpc-timeout` the deadline layer set: the upstream did
            // not answer in time, which is not the upstream being down.
            Ok(errors::response(&errors::deadline_exceeded(deadline)))
        }
        Err(error) => {
            let cause = std::error::Error::source(&error)
                .map_or_else(|| error.to_string(), |source| format!("{error}: {source}"));
            tracing::warn!(upstream = upstream.name(), error = %cause, "upstream unreachable");
            upstream.record(Err(cause));
            Ok(errors::response(&errors::upstream_unavailable(
                upstream.name(),
            )))
        }
    }
}

/// Whether `error` (or one of its causes) is the channel's deadline expiring.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Answers UNIMPLEMENTED for a path whose service no route serves.
#[derive(Clone, Debug)]
pub struct RouteCheckLayer {
    table: Arc<RouteTable>,
}

impl RouteCheckLayer {
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteCheckLayer {
    type Service = RouteCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteCheck {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// See [`RouteCheckLayer`].
#[derive(Clone, Debug)]
pub struct RouteCheck<S> {
    inner: S,
    table: Arc<RouteTable>,
}

/// The future of [`RouteCheck`].
pub type RouteCheckFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Service<http::Request<Body>> for RouteCheck<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = RouteCheckFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if self.table.serves(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let response = errors::response(&errors::no_route(request.uri().path()));
        Box::pin(async move { Ok(response) })
    }
}
