//! Test harness shared by every RepitBot test suite.
//!
//! - [`backends`]: where the PostgreSQL, NATS and KurrentDB servers are, from the environment that
//!   `scripts/test` sets up. Under `CI=true` a missing server fails the test with instructions;
//!   elsewhere the test is skipped with a loud notice, never silently passed.
//! - [`identity`]: tutor accounts signed up through the real user service, and channels that
//!   carry their access token.
//! - [`process`]: starts a real binary (`repitd`) on a free port and waits until it listens.
//!
//! End-to-end tests that start `repitd` live in `services/repitd/tests/`, because Cargo only
//! builds a binary for the integration tests of its own package (`CARGO_BIN_EXE_repitd`).

pub mod backends;
pub mod identity;
pub mod process;

pub use backends::{Backend, require};
pub use process::{ChildServer, spawn_server};
