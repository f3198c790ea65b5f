//! Events as written ([`NewEvent`]) and as read back ([`RecordedEvent`]).

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Position, StreamName};

/// The identity of an event, unique across the store. A retried append carries the same ids, which
/// is how the store recognises it (see [`crate::EventStore::append`]); the relay uses it as the
/// NATS `Nats-Msg-Id`, so JetStream drops duplicates too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh id. UUIDv7 is time-ordered, so ids written together sit together in B-tree indexes.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID, for example one decoded from a request.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id as a UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// A deterministic id derived from `source` and `name` (UUIDv5). Reactors use it so that
    /// handling the same source event twice produces the same event ids, which the store then
    /// recognises as a retry instead of writing the effect twice.
    pub fn derived(source: EventId, name: &str) -> Self {
        Self(Uuid::new_v5(&source.0, name.as_bytes()))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<EventId> for Uuid {
    fn from(id: EventId) -> Self {
        id.0
    }
}

/// How an event's `data` is encoded.
///
/// Exactly two kinds, because KurrentDB keeps only an "is JSON" flag: `Protobuf` is stored there as
/// `application/octet-stream` and comes back as `Protobuf`, so every backend round-trips it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ContentType {
    /// UTF-8 JSON; the store checks that `data` parses.
    Json,
    /// A protobuf message (RepitBot's events); opaque bytes to the store.
    Protobuf,
}

impl ContentType {
    /// Whether the data is JSON.
    pub const fn is_json(self) -> bool {
        matches!(self, Self::Json)
    }
}

/// An event to append.
///
/// Fields are public and unchecked on purpose: the store validates the whole batch before it
/// writes anything (see [`crate::limits::validate_append`]), so a bad event in a batch is reported
/// by index and nothing is written.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewEvent {
    /// Unique id; reusing it marks the append as a retry.
    pub id: EventId,
    /// The event type: for RepitBot events the full protobuf message name
    /// (`repit.lesson.v1.LessonScheduled`). Non-empty, at most 255 bytes, no control
    /// characters, and not starting with `$` (reserved for system events).
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// Correlation id, causation id, actor and trace context (`repit.common.v1.EventMetadata`).
    pub metadata: Bytes,
}

impl NewEvent {
    /// A JSON event with a fresh id and no metadata.
    pub fn json(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self::new(event_type, ContentType::Json, data)
    }

    /// A protobuf event with a fresh id and no metadata.
    pub fn protobuf(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self::new(event_type, ContentType::Protobuf, data)
    }

    fn new(
        event_type: impl Into<String>,
        content_type: ContentType,
        data: impl Into<Bytes>,
    ) -> Self {
        Self {
            id: EventId::new(),
            event_type: event_type.into(),
            content_type,
            data: data.into(),
            metadata: Bytes::new(),
        }
    }

    /// Replaces the id, for deterministic or client-chosen ids.
    #[must_use]
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// The bytes this event counts against [`crate::Limits::max_append_size`]: its type, data and
    /// metadata (the fixed-size id and flags are left out so the figure matches what a caller
    /// controls).
    pub fn size(&self) -> usize {
        self.event_type.len() + self.data.len() + self.metadata.len()
    }
}

/// An event as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its number in the stream, from 0, without gaps. Revisions continue after a soft delete.
    pub revision: u64,
    /// Its place in `$all`.
    pub position: Position,
    /// The id it was appended with.
    pub id: EventId,
    /// The event type it was appended with.
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// The metadata it was appended with.
    pub metadata: Bytes,
    /// When the store wrote it (UTC, microsecond precision so every backend round-trips it).
    pub created: DateTime<Utc>,
}
