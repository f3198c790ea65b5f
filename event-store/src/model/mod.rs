//! The vocabulary shared by every backend: names, events, revisions, positions, options.

mod event;
mod metadata;
mod position;
mod read;
mod revision;
mod stream_name;

pub use event::{ContentType, EventId, NewEvent, RecordedEvent};
pub use metadata::{InvalidMetadata, StreamMetadata, VersionedMetadata};
pub use position::{InvalidPosition, Position};
pub use read::{
    AllFilter, DEFAULT_CHECKPOINT_INTERVAL, Direction, ReadAllOptions, ReadFrom, ReadStreamOptions,
    SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
};
pub use revision::{AppendResult, CurrentRevision, ExpectedRevision};
pub use stream_name::{InvalidStreamName, MAX_STREAM_NAME_LEN, StreamName};
