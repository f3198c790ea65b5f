//! The edge: every layer a call passes at the gateway, composed once, so `repitd --target
//! gateway` (a hop in front of upstreams) and `--target all` (the services in the same process,
//! no hop) apply the same policies in the same order.
//!
//! Outermost first, and why each sits where it does:
//! 1. CORS: answers browser preflights itself and adds the CORS headers to every answer, the
//!    gateway's own refusals included, or a browser would hide them from the page.
//! 2. HTTP/1.1 bodies are read whole first, so that an early refusal (auth, limits) reaches a
//!    client that is still writing its request instead of a closed connection.
//! 3. gRPC-web: turns `application/grpc-web(-text)` calls into gRPC, so everything inside sees
//!    one protocol (and trailers go back into the body for the browser).
//! 4. Request ids: before any refusal, so even a shed or rate-limited call has an id to quote.
//! 5. Route check: an unknown service is UNIMPLEMENTED before anything is spent on it.
//! 6. Load shedding: the cheapest refusal (one atomic add) comes before token verification.
//! 7. Authentication (gateway hop only; in-process services authenticate themselves): refuses
//!    protected calls without a valid token and names the caller for the limiter.
//! 8. Rate limit: per caller, so it needs the caller from 7 (or verifies the token itself).
//! 9. Deadline: the last layer before the call is served, so the time spent queued in the layers
//!    above (nothing: none of them waits) does not eat into it; sets `grpc-timeout` upstream.
//! 10. Proxy: forwards to the upstream, or hands the call to the services mounted here.

use std::sync::Arc;
use std::time::Duration;

use repit_platform::auth::{AuthLayer, AuthService, Verifier};
use tower::Layer;
use tower::util::Either;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use crate::deadline::{Deadline, DeadlineLayer, DeadlinePolicy};
use crate::http1::{Http1Body, Http1BodyLayer};
use crate::proxy::{Proxy, ProxyLayer, RouteCheck, RouteCheckLayer};
use crate::rate_limit::{
    LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER, RateLimit, RateLimitLayer, RateLimiter,
};
use crate::request_id::{RequestId, RequestIdLayer};
use crate::route::RouteTable;
use crate::shed::{LoadMeter, LoadShed, LoadShedLayer};

/// Headers a browser page may read from answers (gRPC-web carries the status in headers when an
/// answer has no body).
const EXPOSED_HEADERS: [&str; 7] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    LIMIT_HEADER,
    REMAINING_HEADER,
    RESET_HEADER,
];

/// Headers a browser page may send.
const ALLOWED_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-request-id",
    "traceparent",
    "grpc-accept-encoding",
];

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The CORS policy: the configured origins (`*` for any), POST only (gRPC-web is POST).
pub fn cors(allowed_origins: &[String]) -> CorsLayer {
    let origin = if allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins
                .iter()
                .filter_map(|origin| http::HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([http::Method::POST])
        .allow_headers(ALLOWED_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(http::HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Everything the edge layers share with the gateway service (`GatewayGrpc`).
#[derive(Clone, Debug)]
pub struct Edge {
    pub table: Arc<RouteTable>,
    pub meter: Arc<LoadMeter>,
    /// `None`: rate limits are off.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Edge authentication; `None` when the services behind authenticate every call themselves
    /// (in-process).
    pub auth: Option<AuthLayer>,
    /// Names the caller for the limiter when there is no edge authentication.
    pub verifier: Option<Arc<Verifier>>,
    pub deadlines: DeadlinePolicy,
    pub cors_allowed_origins: Vec<String>,
}

/// What the routed call passes below authentication.
pub type Limited<S> = RateLimit<Deadline<Proxy<S>>>;

/// The whole edge around the local services `S`.
pub type EdgeService<S> = Cors<
    Http1Body<
        tonic_web::GrpcWebService<
            RequestId<RouteCheck<LoadShed<Either<AuthService<Limited<S>>, Limited<S>>>>>,
        >,
    >,
>;

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, local: S) -> Self::Service {
        let limited = RateLimitLayer::new(self.limiter.clone(), self.verifier.clone()).layer(
            DeadlineLayer::new(self.deadlines)
                .layer(ProxyLayer::new(Arc::clone(&self.table)).layer(local)),
        );
        let authenticated = match &self.auth {
            Some(auth) => Either::Left(auth.layer(limited)),
            None => Either::Right(limited),
        };
        let inner = RequestIdLayer.layer(
            RouteCheckLayer::new(Arc::clone(&self.table))
                .layer(LoadShedLayer::new(Arc::clone(&self.meter)).layer(authenticated)),
        );
        cors(&self.cors_allowed_origins)
            .layer(Http1BodyLayer.layer(tonic_web::GrpcWebLayer::new().layer(inner)))
    }
}
