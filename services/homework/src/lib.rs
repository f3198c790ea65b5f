//! The homework service: homework assignments, submissions, reviews and files (PRODUCT.md §5).
//!
//! Status: contract only. `proto/repit/homework/v1/` defines every RPC, and `repitd` mounts this
//! service so it is listed by reflection and health, but each RPC answers UNIMPLEMENTED naming
//! itself until this crate implements it (domain, application, gRPC adapter, read models).

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str =
    repit_proto::repit::homework::v1::homework_service_server::SERVICE_NAME;
