//! The user service: identity and authentication: sign-up, invites, roles, parents, tokens (PRODUCT.md §1).
//!
//! Status: contract only. `proto/repit/user/v1/` defines every RPC, and `repitd` mounts this
//! service so it is listed by reflection and health, but each RPC answers UNIMPLEMENTED naming
//! itself until this crate implements it (domain, application, gRPC adapter, read models).

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str = repit_proto::repit::user::v1::user_service_server::SERVICE_NAME;
