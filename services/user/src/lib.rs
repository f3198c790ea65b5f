//! The user service: identity and authentication: sign-up, invites, roles, parents, tokens
//! (PRODUCT.md §1).
//!
//! - [`domain`]: the account, login-name, invite, session (refresh-token rotation with reuse
//!   detection) and signing-key ring aggregates, pure, with their tests.
//! - [`keys`]: the key-encryption key and the signing-key ring (sealed keys in the event store).
//! - [`application`]: sign-up, login, refresh, logout, invites and Telegram, roles, parents,
//!   accounts.
//! - [`projections`]: the `user.directory` read model (accounts, grants, parent links, sessions,
//!   invites) and [`queries`], the lists answered from it.
//! - [`rate_limit`]: the keyed token buckets that limit the public RPCs.
//! - [`grpc`]: the tonic adapter.

pub mod application;
pub mod domain;
pub mod grpc;
pub mod keys;
pub mod projections;
pub mod queries;
pub mod rate_limit;

pub use projections::DirectoryProjection;

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str = repit_proto::repit::user::v1::user_service_server::SERVICE_NAME;
