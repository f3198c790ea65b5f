//! The system of record: append-only event streams with EventStoreDB's semantics.
//!
//! One trait, several backends, one conformance suite (see DESIGN.md, "Backends" and
//! "Write path"):
//!
//! - [`model`]: the vocabulary every backend shares — [`StreamName`] (parsed once),
//!   [`NewEvent`] / [`RecordedEvent`], [`ExpectedRevision`], [`Position`] in `$all`, read and
//!   subscription options, the `$all` filter, [`StreamMetadata`].
//! - [`error`]: [`Error`], one typed error for all backends, with its gRPC mapping.
//! - [`limits`]: [`Limits`] (1 MiB appends by default) and the batch check every backend runs
//!   before writing anything.
//! - [`store`]: the object-safe [`EventStore`] trait; services hold an `Arc<dyn EventStore>`.
//! - [`sqlite`]: [`SqliteEventStore`], the embedded default (one WAL file, group commit,
//!   gap-free positions, catch-up subscriptions woken after each commit).
//! - [`postgres`]: [`PostgresEventStore`], for many concurrent writers (group commit over a few
//!   connections, no lock wider than a stream's row; `$all` ordered by transaction id and read
//!   below the snapshot's xmin so no late commit is skipped; subscriptions woken by
//!   LISTEN/NOTIFY).
//! - [`kurrentdb`] (cargo feature `kurrentdb`, on by default): [`KurrentDbEventStore`], the
//!   distributed store on KurrentDB/EventStoreDB through the `kurrentdb` gRPC client; the
//!   connection string and how the model maps onto KurrentDB are in its module docs.
//! - [`aggregate`]: [`Aggregate`] (pure `decide` / `evolve`), [`EventCodec`], and the
//!   [`Repository`] that loads, decides, appends with the expected revision and retries
//!   conflicts a bounded number of times.
//! - [`relay`]: the [`Relay`] that follows `$all` and publishes every event exactly once, in
//!   order, to a NATS JetStream stream (distributed mode's feed for projections), and
//!   [`relay::envelope`], the wire format it shares with the consumers.
//! - `conformance` (cargo feature `conformance`): the backend-independent test suite, one async
//!   function per property plus `conformance_tests!`, which turns them into `#[tokio::test]`s
//!   for a `conformance::StoreFactory`. This crate's tests enable the feature through a
//!   dev-dependency on the crate itself; other backends' tests do the same.
//!
//! Benchmarks (`benches/event_store.rs`) measure every available backend and write BENCHMARKS.md.

pub mod aggregate;
mod catch_up;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod limits;
pub mod model;
pub mod postgres;
pub mod relay;
pub mod sqlite;
pub mod store;

pub use aggregate::{Aggregate, EventCodec, Repository, RepositoryError};
pub use error::{Error, InvalidEventReason, Result};
#[cfg(feature = "kurrentdb")]
pub use kurrentdb::{KurrentDbEventStore, KurrentDbOptions};
pub use limits::Limits;
pub use model::{
    AllFilter, AppendResult, ContentType, CurrentRevision, Direction, EventId, ExpectedRevision,
    NewEvent, Position, ReadAllOptions, ReadFrom, ReadStreamOptions, RecordedEvent, StreamMetadata,
    StreamName, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem, VersionedMetadata,
};
pub use postgres::{PostgresEventStore, PostgresOptions};
pub use relay::{Relay, RelayError, RelayOptions, RelayStatus};
pub use sqlite::{SqliteEventStore, SqliteOptions};
pub use store::{EventStore, EventStream, Subscription};
