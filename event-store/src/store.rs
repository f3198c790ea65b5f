//! The `EventStore` trait: EventStoreDB's semantics, one contract for every backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::limits::Limits;
use crate::model::{
    AppendResult, ExpectedRevision, NewEvent, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    StreamMetadata, StreamName, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
    VersionedMetadata,
};

/// Events read from a stream or from `$all`, page by page as the consumer pulls.
pub type EventStream = BoxStream<'static, Result<RecordedEvent>>;

/// A catch-up subscription. It ends only after yielding an error; drop it to unsubscribe.
pub type Subscription = BoxStream<'static, Result<SubscriptionItem>>;

/// An append-only store of event streams with EventStoreDB's semantics.
///
/// Object-safe, so services hold an `Arc<dyn EventStore>` and the backend is chosen by
/// configuration. Reads and subscriptions return `'static` streams that own what they need
/// (a pool handle, a client): a caller can move them into a task, and nothing happens until the
/// stream is polled. Errors that concern the whole read (a tombstoned stream, an unreachable
/// backend) arrive as the stream's first item.
///
/// Every backend passes `crate::conformance` (feature `conformance`), which is the executable
/// form of the rules written here.
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// The limits appends are checked against.
    fn limits(&self) -> &Limits;

    /// Appends `events` to `stream` atomically if the stream is in the `expected` state.
    ///
    /// - All events or none are written; their revisions and `$all` positions are contiguous,
    ///   and `$all` order follows completion (an append that finished before another started has
    ///   lower positions).
    /// - The batch is checked first ([`crate::limits::validate_append`]).
    /// - A soft-deleted stream counts as absent (`NoStream`); the append recreates it and its
    ///   revisions continue where they stopped. A tombstoned stream gives
    ///   [`crate::Error::StreamDeleted`].
    /// - A retry is recognised by its event ids: when every id of the batch is already in this
    ///   stream, consecutively and in order (and, for [`ExpectedRevision::Exact`], right after
    ///   the expected revision), the original [`AppendResult`] is returned and nothing is
    ///   written. Any other overlap with stored ids is [`crate::Error::IdempotencyConflict`]
    ///   (when the expected revision does not hold either, a backend may report
    ///   [`crate::Error::WrongExpectedVersion`] instead: both mean nothing was written).
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult>;

    /// Reads a stream. An absent or soft-deleted stream reads as empty; a tombstoned one yields
    /// [`crate::Error::StreamDeleted`]. Events hidden by the stream's metadata (max count, max
    /// age, truncate before) or by a soft delete are skipped.
    fn read_stream(&self, stream: &StreamName, options: ReadStreamOptions) -> EventStream;

    /// Reads `$all`, the events of every stream in commit order, filtered server-side.
    fn read_all(&self, options: ReadAllOptions) -> EventStream;

    /// Subscribes to one stream: history after `from`, then
    /// [`SubscriptionItem::CaughtUp`], then live events. A slow consumer loses nothing: the
    /// subscription reads again from the store when it falls behind instead of buffering.
    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription;

    /// Subscribes to `$all`, like [`EventStore::subscribe_to_stream`], with a filter and
    /// [`SubscriptionItem::Checkpoint`]s while filtered-out events go by.
    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription;

    /// Soft-deletes a stream: it reads as empty and counts as absent until the next append
    /// recreates it. Its events stay in `$all`. Deleting an absent stream succeeds.
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()>;

    /// Tombstones a stream: it can never be read, written or recreated. Its events stay in
    /// `$all`. Tombstoning an absent stream reserves the name for good.
    async fn tombstone_stream(&self, stream: &StreamName, expected: ExpectedRevision)
    -> Result<()>;

    /// The stream's metadata and its metadata revision, or `None` if none was ever set.
    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>>;

    /// Replaces the stream's metadata if the *metadata* is at the `expected` revision
    /// ([`ExpectedRevision::NoStream`]: never set). Returns the new metadata revision. A
    /// conflict names the `$$<stream>` metadata stream. Metadata can be set before the stream
    /// has events; it does not create the stream.
    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: &StreamMetadata,
    ) -> Result<u64>;
}

/// Lets generic code take an `Arc<dyn EventStore>` (or any shared store) where it asks for
/// `impl EventStore`.
#[async_trait]
impl<S: EventStore + ?Sized> EventStore for Arc<S> {
    fn limits(&self) -> &Limits {
        (**self).limits()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        (**self).append(stream, expected, events).await
    }

    fn read_stream(&self, stream: &StreamName, options: ReadStreamOptions) -> EventStream {
        (**self).read_stream(stream, options)
    }

    fn read_all(&self, options: ReadAllOptions) -> EventStream {
        (**self).read_all(options)
    }

    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription {
        (**self).subscribe_to_stream(stream, from)
    }

    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription {
        (**self).subscribe_to_all(options)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()> {
        (**self).delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<()> {
        (**self).tombstone_stream(stream, expected).await
    }

    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>> {
        (**self).get_stream_metadata(stream).await
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: &StreamMetadata,
    ) -> Result<u64> {
        (**self)
            .set_stream_metadata(stream, expected, metadata)
            .await
    }
}
