//! The system of record: append-only event streams with EventStoreDB semantics.
//!
//! Status: not built yet. This crate will hold the `EventStore` trait, its SQLite (embedded default),
//! PostgreSQL and KurrentDB backends, the conformance suite every backend passes, and the relay
//! that publishes `$all` to NATS JetStream (see DESIGN.md, "Backends" and "Write path").
