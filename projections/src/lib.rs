//! The projection runtime that builds every read model (and runs every reactor) from the event
//! feed (DESIGN.md, "Read path and fan-out").
//!
//! - [`feed`]: where events come from, behind one [`Feed`] interface — the store's own catch-up
//!   subscription (embedded) or a durable JetStream pull consumer filled by the relay
//!   (distributed).
//! - [`db`]: [`ReadModelDb`], the SQLite or PostgreSQL database read models live in; one
//!   projection definition serves both.
//! - [`projection`]: the [`Projection`] trait — a permanent name, the event types it wants, the
//!   tables it owns ([`TableDef`]) and `apply`. A reactor is a projection without tables whose
//!   `apply` sends commands with ids derived from the source event.
//! - [`runtime`]: [`Runtime`] runs each projection: batches applied in one transaction with the
//!   checkpoint (so redelivery and replay are harmless), poison events parked with their error,
//!   rebuilds into fresh tables from position 0 swapped in atomically.
//! - [`admin`]: status and lag per projection, parked events, retrying them.
//! - `checkpoint` (private): the bookkeeping rows.
//!
//! Tables are generations: the rows of table `lessons` live in `lessons_g<N>` and the stable name
//! `lessons` is a view on the live generation, which is what analysts and services query. See
//! docs/adr/0008-event-pipeline.md.

pub mod admin;
mod checkpoint;
pub mod db;
pub mod feed;
pub mod projection;
pub mod runtime;

pub use admin::{ParkedEvent, ProjectionStatus, RetryReport};
pub use db::{DbError, Dialect, ReadModelDb, is_unavailable};
pub use feed::{Batch, Feed, FeedError, FeedSource, FeedSpec};
pub use projection::{
    ApplyError, Projection, ProjectionTx, TableDef, bigint, enum_column, fold_order,
};
pub use runtime::{RebuildReport, Runtime, RuntimeError, RuntimeOptions};
