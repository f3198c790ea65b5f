//! Feeds: where a projection's events come from, behind one interface.
//!
//! - [`StoreFeed`]: the event store's own catch-up subscription to `$all` (embedded mode: no
//!   broker, the projection runs beside the store).
//! - [`jetstream::JetStreamFeed`]: a durable JetStream pull consumer on the stream the relay fills
//!   (distributed mode: projections scale apart from the services and never touch the store).
//!
//! Both deliver events in `$all` order, at least once. The runtime makes redelivery harmless: it
//! writes rows and checkpoint in one transaction and skips events at or below the checkpoint.

pub mod jetstream;
mod store;

use std::fmt;

use async_trait::async_trait;
use futures::future::BoxFuture;
use repit_event_store::{Position, RecordedEvent};

pub use jetstream::{JetStreamFeed, JetStreamSource};
pub use store::StoreFeed;

/// Why a feed could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The event store failed (unreachable, or the subscription ended).
    #[error("event store: {0}")]
    Store(#[from] repit_event_store::Error),
    /// NATS or JetStream failed.
    #[error("jetstream: {0}")]
    JetStream(String),
    /// A message on the stream is not a relayed event (missing or malformed headers).
    #[error("malformed message at stream sequence {sequence}: {reason}")]
    Malformed {
        /// The JetStream sequence of the message.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The feed ended (shutdown, or the source closed).
    #[error("feed closed")]
    Closed,
}

/// What a projection asks of a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSpec {
    /// The projection's stable name; a JetStream feed names its durable consumer after it.
    pub name: String,
    /// Only events whose type starts with one of these (empty: every event).
    pub event_type_prefixes: Vec<String>,
    /// Resume after this position (the projection's checkpoint); `None`: from the start.
    pub after: Option<Position>,
    /// A rebuild: read everything from the start through a fresh, throw-away reader, leaving
    /// the durable consumer of the live projection untouched.
    pub replay: bool,
}

impl FeedSpec {
    /// Whether an event type passes the prefixes (feeds filter on the client too, so that a
    /// coarser server-side filter never lets a foreign event through).
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_type_prefixes.is_empty()
            || self
                .event_type_prefixes
                .iter()
                .any(|p| event_type.starts_with(p.as_str()))
    }
}

/// Events handed to the runtime together, in `$all` order.
pub struct Batch {
    /// The events, possibly none (a checkpoint-only batch from a filtered subscription).
    pub events: Vec<RecordedEvent>,
    /// Everything up to this position that the projection wants is in `events` or was
    /// delivered before: the checkpoint to record once the batch is applied.
    pub position: Option<Position>,
    /// The feed had nothing more when this batch was cut: the reader is at the live end (a
    /// rebuild swaps its tables in once it gets here).
    pub caught_up: bool,
    ack: Option<BoxFuture<'static, Result<(), FeedError>>>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("events", &self.events.len())
            .field("position", &self.position)
            .field("caught_up", &self.caught_up)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// A batch with nothing to acknowledge (the store feed keeps no server-side state).
    pub fn new(events: Vec<RecordedEvent>, position: Option<Position>) -> Self {
        Self {
            events,
            position,
            caught_up: false,
            ack: None,
        }
    }

    /// Marks the batch as reaching the live end of the feed.
    #[must_use]
    pub fn at_live_end(mut self, caught_up: bool) -> Self {
        self.caught_up = caught_up;
        self
    }

    /// A batch whose delivery is confirmed by running `ack` once it is durably applied.
    pub fn with_ack(
        events: Vec<RecordedEvent>,
        position: Option<Position>,
        ack: BoxFuture<'static, Result<(), FeedError>>,
    ) -> Self {
        Self {
            events,
            position,
            caught_up: false,
            ack: Some(ack),
        }
    }

    /// Confirms the batch to the source, after its rows and checkpoint are committed. A lost
    /// acknowledgement only means redelivery, which the checkpoint makes harmless.
    pub async fn ack(self) -> Result<(), FeedError> {
        match self.ack {
            Some(ack) => ack.await,
            None => Ok(()),
        }
    }
}

/// A source of events for one projection.
#[async_trait]
pub trait Feed: Send + fmt::Debug {
    /// Waits until at least one event (or a checkpoint) is available, then returns what is
    /// available without further waiting, at most `max` events.
    ///
    /// Must be cancel-safe: the runtime drops the future on shutdown and to write a lazy
    /// checkpoint, so nothing may be taken from the source before the one point it waits at.
    async fn next_batch(&mut self, max: usize) -> Result<Batch, FeedError>;
}

/// Where the feeds of a process come from (chosen by configuration).
#[derive(Clone, Debug)]
pub enum FeedSource {
    /// The store's own subscription.
    Store(std::sync::Arc<dyn repit_event_store::EventStore>),
    /// The JetStream stream filled by the relay.
    JetStream(JetStreamSource),
}

impl FeedSource {
    /// Opens a feed for `spec`.
    pub async fn open(&self, spec: &FeedSpec) -> Result<Box<dyn Feed>, FeedError> {
        match self {
            Self::Store(store) => Ok(Box::new(StoreFeed::open(store.clone(), spec.clone()))),
            Self::JetStream(source) => Ok(Box::new(source.open(spec).await?)),
        }
    }
}
