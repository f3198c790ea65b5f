//! Plumbing shared by every RepitBot service and by the `repitd` binary.
//!
//! - [`config`]: the one configuration file plus `REPIT_…` environment overrides, validated at start.
//! - [`telemetry`]: structured logs (text for people, JSON for machines).
//! - [`shutdown`]: the one signal (SIGINT/SIGTERM) that reaches every server and background task.
//! - [`status`]: the mapping of our errors to `tonic::Status` with AIP-193 error details.
//! - [`events`]: `proto_events!`, a service's event enum over its published protobuf messages
//!   and the codec that stores them under their full names.
//! - [`time`]: protobuf time types ↔ chrono, saturating where `evolve` must not fail.
//! - [`request_context`]: the correlation id, traceparent and actor of the current request,
//!   made ambient by a tower layer so every event appended carries them.
//! - [`paging`]: page sizes and keyset page tokens of the List RPCs.
//! - [`auth`]: access tokens: Ed25519 signing keys, issuing, verifying with a cache, and the
//!   tower layer that answers UNAUTHENTICATED and hands handlers the [`auth::Caller`].

pub mod auth;
pub mod config;
pub mod events;
pub mod paging;
pub mod request_context;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod time;

pub use config::{Config, ConfigError, FeedKind, LogFormat};
pub use request_context::{RequestContext, RequestContextLayer};
pub use shutdown::Shutdown;
