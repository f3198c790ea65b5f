//! The relay against a real NATS JetStream server (`REPIT_TEST_NATS_URL`): every event of `$all`
//! lands in the JetStream stream once, in order, with its headers, across stops and crashes.
//!
//! Each test uses its own stream name and subject prefix on the shared server and deletes its
//! stream at the end, even when it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::{FutureExt, TryStreamExt};
use repit_event_store::relay::{RelayError, RelayOptions, RelayStatus, ensure_stream, envelope};
use repit_event_store::{
    AllFilter, EventId, EventStore, ExpectedRevision, NewEvent, ReadAllOptions, RecordedEvent,
    Relay, SqliteEventStore, StreamMetadata, StreamName,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TEST_LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

/// Runs `body` with a fresh store, a JetStream context and unique relay options, then deletes
/// the JetStream stream whatever happened. Returns early (SKIPPED) without a NATS server.
async fn with_nats<F, Fut>(body: F)
where
    F: FnOnce(Arc<SqliteEventStore>, Context, RelayOptions) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = repit_tests::require(repit_tests::Backend::Nats) else {
        return;
    };
    let client = async_nats::connect(url).await.expect("connect to nats");
    let context = jetstream::new(client);
    let unique = EventId::new().as_uuid().simple().to_string();
    let options = RelayOptions {
        stream_name: format!("RELAY_TEST_{unique}"),
        subject_prefix: format!("test.relay.{unique}"),
        ..RelayOptions::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"))
            .await
            .expect("open store"),
    );
    let outcome = AssertUnwindSafe(tokio::time::timeout(
        TEST_LIMIT,
        body(store, context.clone(), options.clone()),
    ))
    .catch_unwind()
    .await;
    // Absent when the test failed before the relay created it.
    let _ = context.delete_stream(&options.stream_name).await;
    match outcome {
        Ok(result) => result.expect("test time limit"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Creates the test's stream. NATS 2.9 occasionally fails a stream creation that races with
/// the deletion of another stream ("could not create storage directory"), which parallel tests
/// on a shared server do; the relay retries on its own, and so does this.
async fn create_stream(context: &Context, options: &RelayOptions) {
    for attempt in 1.. {
        match ensure_stream(context, options).await {
            Ok(_) => return,
            Err(error) if attempt < 5 => {
                eprintln!("creating the test stream: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot create the test stream: {error}"),
        }
    }
}

fn name(s: &str) -> StreamName {
    StreamName::parse(s).expect("valid stream name")
}

/// A string field of a protobuf message in wire format.
fn proto_string(field: u8, value: &str) -> Vec<u8> {
    let mut bytes = vec![
        field << 3 | 2,
        u8::try_from(value.len()).expect("short value"),
    ];
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

/// Appends `count` events round-robin to three streams (one with a name NATS would trim), as
/// JSON and protobuf, half with metadata.
async fn append_events(store: &SqliteEventStore, first: usize, count: usize) {
    let streams = [name("lesson-1"), name("tutor-2"), name(" odd 100% name ")];
    for n in first..first + count {
        let event = if n % 2 == 0 {
            NewEvent::json("repit.lesson.v1.LessonScheduled", format!(r#"{{"n":{n}}}"#))
        } else {
            NewEvent::protobuf("repit.tutor.v1.TutorRegistered", vec![0x08, n as u8])
                .with_metadata(proto_string(1, &format!("correlation-{n}")))
        };
        store
            .append(
                &streams[n % streams.len()],
                ExpectedRevision::Any,
                vec![event],
            )
            .await
            .expect("append");
    }
}

/// What the relay should have published: `$all` without system events.
async fn expected_events(store: &SqliteEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAllOptions::forwards().filter(AllFilter::default().exclude_system()))
        .try_collect()
        .await
        .expect("read $all")
}

/// Every message of the JetStream stream, decoded, checking that sequences have no gaps.
async fn published_events(context: &Context, options: &RelayOptions) -> Vec<RecordedEvent> {
    let mut stream = context
        .get_stream(&options.stream_name)
        .await
        .expect("get stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut events = Vec::new();
    for sequence in 1..=state.last_sequence {
        let message = stream
            .get_raw_message(sequence)
            .await
            .expect("every sequence holds a message");
        let event =
            envelope::decode(&message.headers, message.payload.clone()).expect("a relayed event");
        assert_eq!(
            message.subject.as_str(),
            envelope::subject(&options.subject_prefix, &event.event_type)
        );
        events.push(event);
    }
    events
}

fn spawn(relay: Relay, shutdown: &CancellationToken) -> JoinHandle<Result<(), RelayError>> {
    tokio::spawn(relay.run(shutdown.clone()))
}

async fn wait_for(status: &mut watch::Receiver<RelayStatus>, what: impl Fn(&RelayStatus) -> bool) {
    tokio::time::timeout(WAIT, status.wait_for(|s| what(s)))
        .await
        .expect("relay progress in time")
        .expect("relay status channel open");
}

async fn stop(task: JoinHandle<Result<(), RelayError>>, shutdown: &CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("relay stops in time")
        .expect("relay task")
        .expect("relay stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_once_in_all_order_with_its_headers() {
    with_nats(|store, context, options| async move {
        append_events(&store, 0, 40).await;
        // A system event in `$all` that the relay must leave out.
        let metadata = StreamMetadata {
            max_count: Some(1_000),
            ..StreamMetadata::default()
        };
        store
            .set_stream_metadata(&name("lesson-1"), ExpectedRevision::Any, &metadata)
            .await
            .expect("set metadata");

        let relay = Relay::new(store.clone(), context.clone(), options.clone());
        let mut status = relay.status();
        let shutdown = CancellationToken::new();
        let task = spawn(relay, &shutdown);
        wait_for(&mut status, |s| s.caught_up && s.published == 40).await;

        // Live events follow the catch-up.
        append_events(&store, 40, 10).await;
        wait_for(&mut status, |s| s.published == 50).await;
        let last = status.borrow().clone();
        stop(task, &shutdown).await;

        let expected = expected_events(&store).await;
        assert_eq!(expected.len(), 50);
        assert_eq!(published_events(&context, &options).await, expected);
        assert_eq!(last.position, expected.last().map(|e| e.position));
        assert_eq!(last.stream_sequence, 50);
        assert!(last.lag.is_some() && last.created.is_some());

        // The raw headers, as another NATS client sees them.
        let stream = context
            .get_stream(&options.stream_name)
            .await
            .expect("stream");
        let first = stream.get_raw_message(1).await.expect("first message");
        let header = |name: &str| first.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id"), Some(expected[0].id.to_string()));
        assert_eq!(header("Repit-Stream").as_deref(), Some("lesson-1"));
        assert_eq!(header("Repit-Revision").as_deref(), Some("0"));
        assert_eq!(
            header("Repit-Position"),
            Some(expected[0].position.to_string())
        );
        assert_eq!(
            header("Repit-Event-Type").as_deref(),
            Some("repit.lesson.v1.LessonScheduled")
        );
        assert_eq!(header("Repit-Content-Type").as_deref(), Some("json"));
        assert_eq!(header("Repit-Metadata"), None);
        assert_eq!(
            first.subject.as_str(),
            format!("{}.lesson.LessonScheduled", options.subject_prefix)
        );
        let second = stream.get_raw_message(2).await.expect("second message");
        assert_eq!(
            second.headers.get("Repit-Content-Type").map(|v| v.as_str()),
            Some("protobuf")
        );
        assert!(second.headers.get("Repit-Metadata").is_some());
        assert_eq!(second.payload, expected[1].data);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_crashed_relay_resumes_without_duplicates_or_gaps() {
    with_nats(|store, context, options| async move {
        append_events(&store, 0, 300).await;
        let options = RelayOptions {
            max_in_flight: 8,
            ..options
        };

        // Stopped cleanly part-way.
        let relay = Relay::new(store.clone(), context.clone(), options.clone());
        let mut status = relay.status();
        let shutdown = CancellationToken::new();
        let task = spawn(relay, &shutdown);
        wait_for(&mut status, |s| s.published >= 50).await;
        stop(task, &shutdown).await;
        let first_run = status.borrow().published;

        // Crashed part-way: the task is dropped with publishes in flight.
        append_events(&store, 300, 100).await;
        let relay = Relay::new(store.clone(), context.clone(), options.clone());
        let mut status = relay.status();
        let task = spawn(relay, &CancellationToken::new());
        wait_for(&mut status, |s| s.published >= 50).await;
        task.abort();
        let _ = task.await;
        let second_run = status.borrow().published;

        // Restarted until it catches up. A publish of the crashed relay that JetStream stored only
        // after the restart read the end of the stream is refused as a conflict: the orchestrator
        // restarts the relay, which then resumes after it.
        let mut third_run = 0;
        for _ in 0..3 {
            let relay = Relay::new(store.clone(), context.clone(), options.clone());
            let mut status = relay.status();
            let shutdown = CancellationToken::new();
            let task = spawn(relay, &shutdown);
            let caught_up = tokio::time::timeout(WAIT, status.wait_for(|s| s.caught_up))
                .await
                .is_ok_and(|changed| changed.is_ok());
            if caught_up {
                third_run = status.borrow().published;
                stop(task, &shutdown).await;
                break;
            }
            let outcome = task.await.expect("relay task");
            assert!(
                matches!(outcome, Err(RelayError::Conflict { .. })),
                "{outcome:?}"
            );
        }
        eprintln!("published {first_run} + {second_run} (crash) + {third_run}");

        let expected = expected_events(&store).await;
        assert_eq!(expected.len(), 400);
        assert_eq!(published_events(&context, &options).await, expected);

        // Nothing left: a fresh relay publishes nothing.
        let relay = Relay::new(store.clone(), context.clone(), options.clone());
        let mut status = relay.status();
        let shutdown = CancellationToken::new();
        let task = spawn(relay, &shutdown);
        wait_for(&mut status, |s| s.caught_up).await;
        assert_eq!(status.borrow().published, 0);
        assert_eq!(
            status.borrow().position,
            expected.last().map(|e| e.position)
        );
        stop(task, &shutdown).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_never_duplicate() {
    with_nats(|store, context, options| async move {
        append_events(&store, 0, 200).await;
        create_stream(&context, &options).await;
        let shutdown = CancellationToken::new();
        let mut relays: Vec<_> = (0..2)
            .map(|_| {
                let relay = Relay::new(store.clone(), context.clone(), options.clone());
                let status = relay.status();
                Some((spawn(relay, &shutdown), status))
            })
            .collect();
        // Racing on the same sequences, both may be refused and stop; the survivor, if any,
        // publishes the rest.
        let mut stream = context
            .get_stream(&options.stream_name)
            .await
            .expect("stream");
        tokio::time::timeout(WAIT, async {
            while stream.info().await.expect("info").state.messages < 200
                && relays.iter().flatten().any(|(task, _)| !task.is_finished())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("all published, or both relays stopped, in time");
        shutdown.cancel();
        let mut conflicts = 0;
        for (task, status) in relays.iter_mut().filter_map(Option::take) {
            let outcome = task.await.expect("relay task");
            eprintln!("relay published {}: {outcome:?}", status.borrow().published);
            match outcome {
                Ok(()) => {}
                Err(RelayError::Conflict { .. }) => conflicts += 1,
                Err(error) => panic!("unexpected relay error: {error}"),
            }
        }
        if conflicts == 2 {
            // What an orchestrator does: start one again.
            let relay = Relay::new(store.clone(), context.clone(), options.clone());
            let mut status = relay.status();
            let shutdown = CancellationToken::new();
            let task = spawn(relay, &shutdown);
            wait_for(&mut status, |s| s.caught_up).await;
            stop(task, &shutdown).await;
        }
        assert_eq!(
            published_events(&context, &options).await,
            expected_events(&store).await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traceparent_in_metadata_becomes_a_header() {
    with_nats(|store, context, options| async move {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut metadata = proto_string(1, "correlation");
        metadata.extend(proto_string(3, "user-7"));
        metadata.extend(proto_string(4, traceparent));
        let traced =
            NewEvent::protobuf("repit.lesson.v1.LessonConducted", Bytes::from_static(b"x"))
                .with_metadata(metadata.clone());
        let untraced = NewEvent::json("repit.lesson.v1.LessonConducted", "{}");
        store
            .append(
                &name("lesson-9"),
                ExpectedRevision::NoStream,
                vec![traced, untraced],
            )
            .await
            .expect("append");

        let relay = Relay::new(store.clone(), context.clone(), options.clone());
        let mut status = relay.status();
        let shutdown = CancellationToken::new();
        let task = spawn(relay, &shutdown);
        wait_for(&mut status, |s| s.caught_up && s.published == 2).await;
        stop(task, &shutdown).await;

        let stream = context
            .get_stream(&options.stream_name)
            .await
            .expect("stream");
        let first = stream.get_raw_message(1).await.expect("first message");
        assert_eq!(
            first.headers.get("traceparent").map(|v| v.as_str()),
            Some(traceparent)
        );
        let event = envelope::decode(&first.headers, first.payload.clone()).expect("decode");
        assert_eq!(event.metadata, metadata);
        let second = stream.get_raw_message(2).await.expect("second message");
        assert!(second.headers.get("traceparent").is_none());
    })
    .await;
}
