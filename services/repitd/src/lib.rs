//! `repitd`: the one RepitBot binary. It runs any subset of the components on one gRPC server,
//! like Grafana Loki's `-target`: `--target all` (the default) mounts every service in one process
//! for a tutor's laptop; `--target lesson,user` runs just those, one Deployment per target on a cluster.
//!
//! - [`cli`]: command-line parsing (`repitd serve`, `repitd config`).
//! - [`targets`]: the components a process can run and how `--target` names them.
//! - [`contracts`]: the RPCs each service's contract declares, read from the descriptor set.
//! - `gateway`: the API gateway's edge around the server and its upstreams (ADR 13).
//! - [`server`]: assembles health, reflection and the selected services on one tonic server,
//!   and starts the selected workers (relay, projections).
//! - [`backends`]: opens the event store, the read-model database and NATS from the config.
//! - [`pipeline`]: the projections this build runs, their feed, and the relay's settings.
//! - [`verifying_keys`]: the keys this process verifies access tokens with, kept current.
//! - [`admin`]: `repitd projections …`, the operator's view of the projection runtime.

pub mod admin;
pub mod backends;
pub mod cli;
pub mod contracts;
mod gateway;
pub mod pipeline;
pub mod server;
pub mod targets;
pub mod verifying_keys;

pub use cli::Cli;
pub use server::{RunningServer, start};
pub use targets::{Component, TargetSet, Worker};
