//! The user service: identity and authentication: sign-up, invites, roles, parents, tokens
//! (PRODUCT.md §1).
//!
//! Status: the domain is being built. [`domain`] holds the account, login-name and session
//! aggregates (refresh-token rotation with reuse detection) with their tests; no RPC uses them
//! yet, so every RPC of `proto/repit/user/v1/` still answers UNIMPLEMENTED naming itself.

pub mod domain;

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str = repit_proto::repit::user::v1::user_service_server::SERVICE_NAME;
