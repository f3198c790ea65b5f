//! The one error type every backend returns, so callers match on meaning, not on backend.

use crate::model::{
    CurrentRevision, EventId, ExpectedRevision, InvalidMetadata, InvalidStreamName, StreamName,
};

/// A boxed error from a backend's driver (sqlx, the KurrentDB client, …).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms every backend can honour.
///
/// Suggested gRPC mapping (DESIGN.md, AIP-193): `WrongExpectedVersion` and `IdempotencyConflict`
/// → ABORTED (the aggregate repository retries the first), `StreamDeleted` → FAILED_PRECONDITION,
/// `InvalidStreamName`, `InvalidEvent`, `EmptyAppend`, `AppendTooLarge`, `InvalidMetadata` →
/// INVALID_ARGUMENT, `Unavailable` → UNAVAILABLE, `Corrupt` → INTERNAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream (or, for metadata, its `$$` metadata stream) is not in the expected state.
    #[error("wrong expected revision on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream whose state did not match.
        stream: StreamName,
        /// What the caller expected.
        expected: ExpectedRevision,
        /// What the store found.
        actual: CurrentRevision,
    },
    /// The stream was tombstoned: it can never be read, written or recreated.
    #[error("stream {stream} is deleted for good")]
    StreamDeleted {
        /// The tombstoned stream.
        stream: StreamName,
    },
    /// The stream name is not allowed here (for writes: a system stream).
    #[error(transparent)]
    InvalidStreamName(#[from] InvalidStreamName),
    /// One event of the batch is malformed; nothing was written.
    #[error("event {index} of the batch is invalid: {reason}")]
    InvalidEvent {
        /// Its index in the batch.
        index: usize,
        /// What is wrong with it.
        reason: InvalidEventReason,
    },
    /// The batch is empty; an append writes at least one event.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The batch is larger than [`crate::Limits::max_append_size`]; nothing was written.
    #[error("append of {size} bytes exceeds the limit of {max} bytes")]
    AppendTooLarge {
        /// Size of the batch as counted by [`crate::NewEvent::size`].
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// Some event ids of the batch were already written, but not as this exact append: only a
    /// retry of the whole batch to the same stream at the same place is recognised.
    #[error("event {event_id} was already appended, but not as this batch to stream {stream}")]
    IdempotencyConflict {
        /// The stream of the refused append.
        stream: StreamName,
        /// The first id of the batch that was found elsewhere.
        event_id: EventId,
    },
    /// Stream metadata is malformed.
    #[error(transparent)]
    InvalidMetadata(#[from] InvalidMetadata),
    /// Data read back from the backend does not decode: a bug or tampering, never a caller's
    /// mistake.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend could not be reached or failed; the operation may be retried. For an append
    /// the outcome is unknown, which is why retries carry the same event ids.
    #[error("event store unavailable")]
    Unavailable(#[source] BoxError),
}

impl Error {
    /// Wraps a backend failure.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable(source.into())
    }

    /// Whether retrying after re-reading the stream can succeed (an optimistic concurrency
    /// conflict).
    pub fn is_wrong_expected_version(&self) -> bool {
        matches!(self, Self::WrongExpectedVersion { .. })
    }
}

/// Why an event of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEventReason {
    /// The event type is empty.
    #[error("event type is empty")]
    EmptyType,
    /// The event type is longer than [`crate::limits::MAX_EVENT_TYPE_LEN`] bytes.
    #[error(
        "event type is {len} bytes long, the limit is {}",
        crate::limits::MAX_EVENT_TYPE_LEN
    )]
    TypeTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The event type contains a control character.
    #[error("event type contains a control character")]
    ControlCharacterInType,
    /// The event type starts with `$`, reserved for system events.
    #[error("event types starting with `$` are reserved for system events")]
    ReservedType,
    /// The content type is JSON but the data is not UTF-8 JSON.
    #[error("data is not valid json: {0}")]
    NotJson(String),
    /// The id appears twice in the batch.
    #[error("event id {0} appears twice in the batch")]
    DuplicateId(EventId),
}
