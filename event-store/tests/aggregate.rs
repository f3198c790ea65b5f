//! The aggregate repository against the SQLite store, with a tiny counter aggregate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use repit_event_store::aggregate::{
    CodecError, EncodedEvent, ExecuteOptions, RepositoryError, given,
};
use repit_event_store::limits::Limits;
use repit_event_store::{
    Aggregate, AppendResult, ContentType, Error, EventCodec, EventId, EventStore, EventStream,
    ExpectedRevision, NewEvent, ReadAllOptions, ReadStreamOptions, RecordedEvent, Repository,
    Result, SqliteEventStore, StreamMetadata, StreamName, SubscribeFrom, SubscribeToAllOptions,
    Subscription, VersionedMetadata,
};
use tempfile::TempDir;

/// A counter that must stay at or below a ceiling.
#[derive(Debug, Default)]
struct Counter {
    value: u64,
}

#[derive(Debug)]
struct Add {
    amount: u64,
    ceiling: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CounterEvent {
    Added { amount: u64 },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum CounterError {
    #[error("adding would pass the ceiling of {ceiling}")]
    PastCeiling { ceiling: u64 },
}

impl Aggregate for Counter {
    type Command = Add;
    type Event = CounterEvent;
    type Error = CounterError;

    fn decide(&self, command: &Add) -> Result<Vec<CounterEvent>, CounterError> {
        if command.amount == 0 {
            return Ok(Vec::new());
        }
        if self.value + command.amount > command.ceiling {
            return Err(CounterError::PastCeiling {
                ceiling: command.ceiling,
            });
        }
        Ok(vec![CounterEvent::Added {
            amount: command.amount,
        }])
    }

    fn evolve(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { amount } => self.value += amount,
        }
    }
}

struct CounterCodec;

const ADDED: &str = "test.counter.Added";

impl EventCodec<CounterEvent> for CounterCodec {
    fn encode(&self, event: &CounterEvent) -> Result<EncodedEvent, CodecError> {
        let CounterEvent::Added { amount } = event;
        Ok(EncodedEvent {
            event_type: ADDED.to_owned(),
            content_type: ContentType::Json,
            data: serde_json::json!({ "amount": amount }).to_string().into(),
        })
    }

    fn decode(&self, event: &RecordedEvent) -> Result<CounterEvent, CodecError> {
        if event.event_type != ADDED {
            return Err(CodecError::new(format!(
                "unknown event type {}",
                event.event_type
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(&event.data)
            .map_err(|e| CodecError::with_source("malformed counter event", e))?;
        let amount = value["amount"]
            .as_u64()
            .ok_or_else(|| CodecError::new("missing amount"))?;
        Ok(CounterEvent::Added { amount })
    }
}

// Given/when/then: the aggregate alone, no I/O.

#[test]
fn adding_below_the_ceiling_records_the_addition() {
    given::<Counter>([CounterEvent::Added { amount: 3 }])
        .when(&Add {
            amount: 2,
            ceiling: 5,
        })
        .then([CounterEvent::Added { amount: 2 }]);
}

#[test]
fn adding_past_the_ceiling_is_refused() {
    given::<Counter>([CounterEvent::Added { amount: 3 }])
        .when(&Add {
            amount: 3,
            ceiling: 5,
        })
        .then_error(CounterError::PastCeiling { ceiling: 5 });
}

#[test]
fn adding_nothing_records_nothing() {
    given::<Counter>([])
        .when(&Add {
            amount: 0,
            ceiling: 5,
        })
        .then([]);
}

// The repository against a real store.

const LIMIT: Duration = Duration::from_secs(30);

async fn sqlite() -> (TempDir, Arc<SqliteEventStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("events.db"))
        .await
        .expect("open");
    (dir, Arc::new(store))
}

fn counter(id: &str) -> StreamName {
    StreamName::parse(format!("counter-{id}")).expect("valid stream name")
}

#[tokio::test]
async fn executing_a_command_appends_its_events_and_returns_the_new_revision() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let repository = Repository::<Counter, _>::new(store.clone(), CounterCodec);
        let s = counter("1");
        // Services run this inside tonic handlers, which need `Send` futures.
        fn assert_send<T: Send>(_: &T) {}
        let future = repository.execute(
            &s,
            &Add {
                amount: 1,
                ceiling: 1,
            },
        );
        assert_send(&future);
        drop(future);
        let first = repository
            .execute(
                &s,
                &Add {
                    amount: 2,
                    ceiling: 10,
                },
            )
            .await
            .expect("execute");
        assert_eq!((first.revision, first.state.value), (Some(0), 2));
        let second = repository
            .execute(
                &s,
                &Add {
                    amount: 3,
                    ceiling: 10,
                },
            )
            .await
            .expect("execute");
        assert_eq!((second.revision, second.state.value), (Some(1), 5));
        assert_eq!(second.events, vec![CounterEvent::Added { amount: 3 }]);
        let loaded = repository.load(&s).await.expect("load");
        assert_eq!((loaded.revision, loaded.state.value), (Some(1), 5));
        let unchanged = repository
            .execute(
                &s,
                &Add {
                    amount: 0,
                    ceiling: 10,
                },
            )
            .await
            .expect("execute");
        assert_eq!(
            (
                unchanged.revision,
                unchanged.position,
                unchanged.events.len()
            ),
            (Some(1), None, 0)
        );
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn assuming_a_new_stream_skips_the_read_and_falls_back_when_it_exists() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let repository = Repository::<Counter, _>::new(store.clone(), CounterCodec);
        let new = ExecuteOptions {
            assume_new: true,
            ..ExecuteOptions::default()
        };
        let add = |amount| Add {
            amount,
            ceiling: 10,
        };
        let s = counter("assumed");
        let first = repository
            .execute_with(&s, &add(4), &new)
            .await
            .expect("a new stream");
        assert_eq!((first.revision, first.state.value), (Some(0), 4));
        // The stream exists now: the blind append is refused and the command is decided on the
        // real state, so the ceiling still holds and the revision continues.
        let second = repository
            .execute_with(&s, &add(5), &new)
            .await
            .expect("decided on the real state");
        assert_eq!((second.revision, second.state.value), (Some(1), 9));
        let refused = repository
            .execute_with(&s, &add(2), &new)
            .await
            .expect_err("past the ceiling on the real state");
        assert!(matches!(
            refused,
            RepositoryError::Domain(CounterError::PastCeiling { .. })
        ));
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn a_refused_command_writes_nothing() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let repository = Repository::<Counter, _>::new(store.clone(), CounterCodec);
        let s = counter("2");
        let refused = repository
            .execute(
                &s,
                &Add {
                    amount: 6,
                    ceiling: 5,
                },
            )
            .await;
        assert!(matches!(
            refused,
            Err(RepositoryError::Domain(CounterError::PastCeiling {
                ceiling: 5
            }))
        ));
        assert_eq!(repository.load(&s).await.expect("load").revision, None);
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn metadata_and_derived_ids_are_stored_and_a_redelivered_command_is_not_applied_twice() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let repository = Repository::<Counter, _>::new(store.clone(), CounterCodec);
        let s = counter("3");
        let source = EventId::new();
        let options = ExecuteOptions {
            metadata: r#"{"causation_id":"x"}"#.into(),
            id_source: Some(source),
            ..ExecuteOptions::default()
        };
        repository
            .execute_with(
                &s,
                &Add {
                    amount: 1,
                    ceiling: 10,
                },
                &options,
            )
            .await
            .expect("execute");
        let stored: Vec<RecordedEvent> = futures::TryStreamExt::try_collect(
            store.read_stream(&s, ReadStreamOptions::forwards()),
        )
        .await
        .expect("read");
        assert_eq!(stored[0].id, EventId::derived(source, &format!("{s}/0")));
        assert_eq!(stored[0].metadata, options.metadata);
        // The same source event handled again: the derived id is already stored.
        let again = repository
            .execute_with(
                &s,
                &Add {
                    amount: 1,
                    ceiling: 10,
                },
                &options,
            )
            .await;
        assert!(
            matches!(
                again,
                Err(RepositoryError::Store(Error::IdempotencyConflict { .. }))
            ),
            "{again:?}"
        );
        assert_eq!(repository.load(&s).await.expect("load").state.value, 1);
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn an_undecodable_event_fails_the_load() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let s = counter("4");
        store
            .append(
                &s,
                ExpectedRevision::NoStream,
                vec![NewEvent::json("test.Other", "{}")],
            )
            .await
            .expect("append");
        let repository = Repository::<Counter, _>::new(store.clone(), CounterCodec);
        let loaded = repository.load(&s).await;
        assert!(
            matches!(loaded, Err(RepositoryError::Decode { revision: 0, .. })),
            "{loaded:?}"
        );
    })
    .await
    .expect("time limit");
}

/// Appends an event of its own to the stream just before each of the first `interferences`
/// appends it forwards, as a concurrent writer would.
#[derive(Debug)]
struct Interfering {
    inner: Arc<SqliteEventStore>,
    interferences: AtomicU32,
}

#[async_trait]
impl EventStore for Interfering {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let left = self.interferences.load(Ordering::SeqCst);
        if left > 0 {
            self.interferences.store(left - 1, Ordering::SeqCst);
            let theirs = CounterCodec
                .encode(&CounterEvent::Added { amount: 1 })
                .expect("encode");
            let theirs = NewEvent::json(theirs.event_type, theirs.data);
            self.inner
                .append(stream, ExpectedRevision::Any, vec![theirs])
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }

    fn read_stream(&self, stream: &StreamName, options: ReadStreamOptions) -> EventStream {
        self.inner.read_stream(stream, options)
    }

    fn read_all(&self, options: ReadAllOptions) -> EventStream {
        self.inner.read_all(options)
    }

    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription {
        self.inner.subscribe_to_stream(stream, from)
    }

    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription {
        self.inner.subscribe_to_all(options)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()> {
        self.inner.delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<()> {
        self.inner.tombstone_stream(stream, expected).await
    }

    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>> {
        self.inner.get_stream_metadata(stream).await
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: &StreamMetadata,
    ) -> Result<u64> {
        self.inner
            .set_stream_metadata(stream, expected, metadata)
            .await
    }
}

#[tokio::test]
async fn a_concurrent_write_is_retried_on_fresh_state() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let interfering = Arc::new(Interfering {
            inner: store.clone(),
            interferences: AtomicU32::new(2),
        });
        let repository = Repository::<Counter, _>::new(interfering, CounterCodec);
        let s = counter("5");
        let executed = repository
            .execute(
                &s,
                &Add {
                    amount: 5,
                    ceiling: 10,
                },
            )
            .await
            .expect("retried");
        // Two interfering additions of 1 landed first; the third attempt decided on them.
        assert_eq!((executed.state.value, executed.revision), (7, Some(2)));
        // A retry decides on fresh state, so the ceiling still holds.
        let interfering = Arc::new(Interfering {
            inner: store.clone(),
            interferences: AtomicU32::new(1),
        });
        let repository = Repository::<Counter, _>::new(interfering, CounterCodec);
        let refused = repository
            .execute(
                &s,
                &Add {
                    amount: 3,
                    ceiling: 10,
                },
            )
            .await;
        assert!(
            matches!(
                refused,
                Err(RepositoryError::Domain(CounterError::PastCeiling { .. }))
            ),
            "{refused:?}"
        );
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn a_stream_that_keeps_changing_ends_in_a_conflict_after_bounded_attempts() {
    tokio::time::timeout(LIMIT, async {
        let (_dir, store) = sqlite().await;
        let interfering = Arc::new(Interfering {
            inner: store.clone(),
            interferences: AtomicU32::new(u32::MAX),
        });
        let attempts = std::num::NonZeroU32::new(4).expect("non-zero");
        let repository =
            Repository::<Counter, _>::new(interfering, CounterCodec).with_max_attempts(attempts);
        let s = counter("6");
        match repository
            .execute(
                &s,
                &Add {
                    amount: 1,
                    ceiling: 1000,
                },
            )
            .await
        {
            Err(RepositoryError::Conflict { stream, attempts }) => {
                assert_eq!((stream, attempts), (s.clone(), 4))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // Only the interfering writer's events were written.
        let value = Repository::<Counter, _>::new(store.clone(), CounterCodec)
            .load(&s)
            .await
            .expect("load")
            .state
            .value;
        assert_eq!(value, 4);
    })
    .await
    .expect("time limit");
}
