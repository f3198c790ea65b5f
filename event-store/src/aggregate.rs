//! Aggregates and the repository that runs commands against them (DESIGN.md, "Write path").
//!
//! An [`Aggregate`] is pure: `decide` turns a command into events or a domain error without I/O,
//! `evolve` folds an event into the state and cannot fail. The [`Repository`] does the I/O: it
//! reads the stream, folds it, decides, and appends with the revision it read as the expected
//! revision. When another writer got there first it starts over from a fresh read, a bounded
//! number of times, then gives up with [`RepositoryError::Conflict`] (ABORTED over gRPC).
//! [`given`] runs the same `decide` / `evolve` pair in given/when/then tests without a store.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;

use crate::error::{BoxError, Error};
use crate::model::{
    ContentType, EventId, ExpectedRevision, NewEvent, Position, ReadStreamOptions, RecordedEvent,
    StreamName,
};
use crate::store::EventStore;

/// A consistency boundary: the state rebuilt from one stream and the rules that guard it.
pub trait Aggregate: Default + Send + Sync {
    /// What a caller asks for. Carries the time and ids it needs, so `decide` stays pure.
    type Command: Send + Sync;
    /// What happened.
    type Event: Send + Sync;
    /// Why a command was refused (a domain error, no technical variants).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what a command does to the current state. Takes the command by reference because
    /// the repository decides again, on fresher state, after a conflict.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies an event to the state.
    fn evolve(&mut self, event: &Self::Event);
}

/// An event serialised for the store.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EncodedEvent {
    /// The stored event type (for protobuf events, the full message name).
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The serialised event.
    pub data: Bytes,
}

/// An event that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl CodecError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by another (a protobuf or JSON decode error).
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Turns an aggregate's events into stored events and back.
pub trait EventCodec<E>: Send + Sync {
    /// Serialises an event.
    fn encode(&self, event: &E) -> Result<EncodedEvent, CodecError>;
    /// Deserialises a stored event. An unknown event type is an error, not skipped: folding a
    /// stream without an event it contains could let `decide` break a rule.
    fn decode(&self, event: &RecordedEvent) -> Result<E, CodecError>;
}

/// Why [`Repository::execute`] did not apply a command.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// The caller expected another revision than the stream has (gRPC ABORTED: reload).
    #[error("stream {stream} is at {actual}, not at the expected revision {expected}")]
    UnexpectedRevision {
        /// The stream.
        stream: StreamName,
        /// The revision the caller passed.
        expected: u64,
        /// The stream's revision (`no stream` when it has no events).
        actual: crate::model::CurrentRevision,
    },
    /// Other writers kept changing the stream; the caller may retry later (gRPC ABORTED).
    #[error("stream {stream} kept changing, gave up after {attempts} attempts")]
    Conflict {
        /// The contended stream.
        stream: StreamName,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// A stored event does not decode.
    #[error("failed to decode event {revision} of stream {stream}")]
    Decode {
        /// The stream being loaded.
        stream: StreamName,
        /// The revision of the event that failed.
        revision: u64,
        /// Why it failed.
        #[source]
        source: CodecError,
    },
    /// A decided event does not encode.
    #[error("failed to encode an event for stream {stream}")]
    Encode {
        /// The stream being written.
        stream: StreamName,
        /// Why it failed.
        #[source]
        source: CodecError,
    },
    /// The store failed (see [`Error`] for what each case means).
    #[error(transparent)]
    Store(#[from] Error),
}

/// An aggregate rebuilt from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The folded state.
    pub state: A,
    /// The revision of the last event read; `None` if the stream has no events.
    pub revision: Option<u64>,
}

/// A command that was applied.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The events appended (empty when the command changed nothing).
    pub events: Vec<A::Event>,
    /// The stream's revision afterwards, to return to the caller; `None` if the stream still
    /// has no events.
    pub revision: Option<u64>,
    /// The `$all` position of the last event appended, if any.
    pub position: Option<Position>,
}

/// Per-command settings for [`Repository::execute_with`].
#[derive(Clone, Debug, Default)]
pub struct ExecuteOptions {
    /// Stored with every event appended (correlation id, causation id, actor, traceparent).
    pub metadata: Bytes,
    /// When set, event ids are derived from it ([`EventId::derived`]) instead of fresh: a
    /// reactor handling the same source event twice then produces the same ids, and the store
    /// refuses to record the effect twice.
    pub id_source: Option<EventId>,
    /// When set, the command is refused with [`RepositoryError::UnexpectedRevision`] unless the
    /// stream is at exactly this revision (a client's optimistic lock, checked on every attempt).
    pub expected_revision: Option<u64>,
    /// The stream is almost certainly new (its name holds a freshly made id): the first attempt
    /// decides on the empty state and appends expecting no stream, skipping the read. Should the
    /// stream exist after all, the append is refused and the command runs the ordinary way.
    pub assume_new: bool,
}

/// The default number of times a command is decided before giving up on a contended stream.
pub const DEFAULT_MAX_ATTEMPTS: NonZeroU32 = match NonZeroU32::new(3) {
    Some(attempts) => attempts,
    None => unreachable!(),
};

/// Loads aggregates from an [`EventStore`] and appends the events their commands decide.
pub struct Repository<A, C> {
    store: Arc<dyn EventStore>,
    codec: C,
    max_attempts: NonZeroU32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A, C> fmt::Debug for Repository<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .field("store", &self.store)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<A, C> Repository<A, C>
where
    A: Aggregate,
    C: EventCodec<A::Event>,
{
    /// A repository over `store` using `codec`, deciding each command at most
    /// [`DEFAULT_MAX_ATTEMPTS`] times.
    pub fn new(store: Arc<dyn EventStore>, codec: C) -> Self {
        Self {
            store,
            codec,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            _aggregate: PhantomData,
        }
    }

    /// Changes how many times a command is decided before [`RepositoryError::Conflict`].
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: NonZeroU32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Reads the stream and folds it into the aggregate.
    pub async fn load(&self, stream: &StreamName) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let mut events = self
            .store
            .read_stream(stream, ReadStreamOptions::forwards());
        let mut loaded = Loaded {
            state: A::default(),
            revision: None,
        };
        while let Some(recorded) = events.try_next().await? {
            let event = self
                .codec
                .decode(&recorded)
                .map_err(|source| RepositoryError::Decode {
                    stream: stream.clone(),
                    revision: recorded.revision,
                    source,
                })?;
            loaded.state.evolve(&event);
            loaded.revision = Some(recorded.revision);
        }
        Ok(loaded)
    }

    /// Loads the aggregate, decides `command`, and appends the result with fresh event ids and
    /// no metadata.
    pub async fn execute(
        &self,
        stream: &StreamName,
        command: &A::Command,
    ) -> Result<Executed<A>, RepositoryError<A::Error>> {
        self.execute_with(stream, command, &ExecuteOptions::default())
            .await
    }

    /// Loads the aggregate, decides `command`, and appends the result expecting the revision
    /// that was read. On a concurrency conflict it starts over from a fresh read, up to the
    /// configured number of attempts.
    pub async fn execute_with(
        &self,
        stream: &StreamName,
        command: &A::Command,
        options: &ExecuteOptions,
    ) -> Result<Executed<A>, RepositoryError<A::Error>> {
        let attempts = self.max_attempts.get();
        if options.assume_new && options.expected_revision.is_none() {
            // Decided on the empty state without reading. Anything but a clean append (a refusal,
            // nothing to do, a stream that exists after all) is decided again on the real state.
            let state = A::default();
            if let Ok(events) = state.decide(command)
                && !events.is_empty()
            {
                let new_events = self.encode(stream, &events, options)?;
                match self
                    .store
                    .append(stream, ExpectedRevision::NoStream, new_events)
                    .await
                {
                    Ok(result) => {
                        let mut state = state;
                        for event in &events {
                            state.evolve(event);
                        }
                        return Ok(Executed {
                            state,
                            events,
                            revision: Some(result.next_expected_revision),
                            position: Some(result.position),
                        });
                    }
                    Err(error) if error.is_wrong_expected_version() => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        for attempt in 1..=attempts {
            let Loaded {
                mut state,
                revision,
            } = self.load(stream).await?;
            if let Some(expected) = options.expected_revision
                && revision != Some(expected)
            {
                return Err(RepositoryError::UnexpectedRevision {
                    stream: stream.clone(),
                    expected,
                    actual: revision.map_or(
                        crate::model::CurrentRevision::NoStream,
                        crate::model::CurrentRevision::Current,
                    ),
                });
            }
            let events = state.decide(command).map_err(RepositoryError::Domain)?;
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    events,
                    revision,
                    position: None,
                });
            }
            let new_events = self.encode(stream, &events, options)?;
            let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            match self.store.append(stream, expected, new_events).await {
                Ok(result) => {
                    for event in &events {
                        state.evolve(event);
                    }
                    return Ok(Executed {
                        state,
                        events,
                        revision: Some(result.next_expected_revision),
                        position: Some(result.position),
                    });
                }
                Err(error) if error.is_wrong_expected_version() => {
                    tracing::debug!(%stream, attempt, "concurrent write, deciding again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(RepositoryError::Conflict {
            stream: stream.clone(),
            attempts,
        })
    }

    fn encode(
        &self,
        stream: &StreamName,
        events: &[A::Event],
        options: &ExecuteOptions,
    ) -> Result<Vec<NewEvent>, RepositoryError<A::Error>> {
        events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let encoded =
                    self.codec
                        .encode(event)
                        .map_err(|source| RepositoryError::Encode {
                            stream: stream.clone(),
                            source,
                        })?;
                let id = match options.id_source {
                    // Stream and index keep ids distinct when one source event leads to
                    // several events or several streams.
                    Some(source) => EventId::derived(source, &format!("{stream}/{index}")),
                    None => EventId::new(),
                };
                Ok(NewEvent {
                    id,
                    event_type: encoded.event_type,
                    content_type: encoded.content_type,
                    data: encoded.data,
                    metadata: options.metadata.clone(),
                })
            })
            .collect()
    }
}

/// Starts a given/when/then test: the aggregate after `history`.
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in history {
        state.evolve(&event);
    }
    Given { state }
}

/// An aggregate in a test, after its history.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the state.
    pub fn when(self, command: &A::Command) -> Then<A> {
        Then {
            result: self.state.decide(command),
        }
    }
}

/// The outcome of a command in a test.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly `expected`.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq + fmt::Debug,
        A::Error: fmt::Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "unexpected events"),
            Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
        }
    }

    /// Asserts the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Event: fmt::Debug,
        A::Error: PartialEq + fmt::Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(error) => assert_eq!(error, expected, "unexpected error"),
        }
    }

    /// The raw outcome, for assertions the helpers above do not cover.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
