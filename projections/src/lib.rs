//! The projection runtime that builds every read model from the event feed.
//!
//! Status: not built yet. This crate will hold the feeds (the store's own subscription, or a durable
//! JetStream consumer), checkpoints written in the same transaction as the rows, parking of poison
//! events, and rebuilds into fresh tables (see DESIGN.md, "Read path and fan-out").
