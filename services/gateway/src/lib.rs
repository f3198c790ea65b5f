//! The API gateway (PRODUCT.md §10, ADR 13): the one entry point of RepitBot. It routes each gRPC
//! service to its upstream, authenticates at the edge, rate-limits per caller, sheds load,
//! applies deadlines, tags requests with ids and trace context, and serves gRPC-web with CORS.
//!
//! Everything is a tower layer over `http` requests with tonic bodies, so `repitd` puts the same
//! [`Edge`] in front of upstreams (`--target gateway`) or of the services in its own process
//! (`--target all`, no hop).
//!
//! - [`edge`]: [`Edge`], the composed stack, and why each layer sits where it does.
//! - [`route`]: [`RouteTable`]: which service is local and which upstream serves the rest.
//! - [`proxy`]: forwarding a call to its upstream, bodies streaming both ways; UNIMPLEMENTED
//!   for a service nobody serves.
//! - [`rate_limit`]: per-caller token buckets in bounded memory (RESOURCE_EXHAUSTED, RATE_LIMITED).
//! - [`shed`]: refusing calls beyond the concurrency limit at once (RESOURCE_EXHAUSTED, OVERLOADED).
//! - [`deadline`]: default and maximum deadlines (DEADLINE_EXCEEDED).
//! - [`request_id`]: `x-request-id` and `traceparent`.
//! - [`grpc`]: `repit.gateway.v1.GatewayService` (routes, upstreams and their health watch,
//!   load, quota).
//! - [`http1`]: HTTP/1.1 request bodies read before anything answers (gRPC-web refusals arrive).
//! - [`errors`]: the statuses the gateway answers itself.

pub mod deadline;
pub mod edge;
pub mod errors;
pub mod grpc;
pub mod http1;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod route;
pub mod shed;

pub use deadline::{DeadlineLayer, DeadlinePolicy};
pub use edge::{Edge, EdgeService};
pub use grpc::GatewayGrpc;
pub use proxy::{ProxyLayer, RouteCheckLayer};
pub use rate_limit::{Policy, RateLimitLayer, RateLimiter};
pub use request_id::RequestIdLayer;
pub use route::{RouteTable, UpstreamSpec};
pub use shed::{LoadMeter, LoadShedLayer};

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str =
    repit_proto::repit::gateway::v1::gateway_service_server::SERVICE_NAME;
