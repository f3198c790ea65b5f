//! The JetStream feed against a real NATS server (`REPIT_TEST_NATS_URL`): a live feed resumes
//! where its acknowledgements left it, a replay reads everything again, filters and `after` hold.
//!
//! Events are published the way the relay does ([`envelope::encode`]) into a stream of the test's
//! own, deleted at the end even when the test fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use repit_event_store::relay::{RelayOptions, ensure_stream, envelope};
use repit_event_store::{ContentType, EventId, Position, RecordedEvent, StreamName};
use repit_projections::feed::{Feed, FeedError, FeedSpec, JetStreamSource};

const TEST_LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

/// Runs `body` against a fresh stream with unique names, then deletes the stream. Returns early
/// (SKIPPED) without a NATS server.
async fn with_nats<F, Fut>(body: F)
where
    F: FnOnce(Context, RelayOptions, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = repit_tests::require(repit_tests::Backend::Nats) else {
        return;
    };
    let client = async_nats::connect(url).await.expect("connect to nats");
    let context = jetstream::new(client);
    let unique = EventId::new().as_uuid().simple().to_string();
    let options = RelayOptions {
        stream_name: format!("FEED_TEST_{unique}"),
        subject_prefix: format!("test.feed.{unique}"),
        ..RelayOptions::default()
    };
    let outcome = AssertUnwindSafe(tokio::time::timeout(TEST_LIMIT, async {
        create_stream(&context, &options).await;
        body(context.clone(), options.clone(), unique).await;
    }))
    .catch_unwind()
    .await;
    let _ = context.delete_stream(&options.stream_name).await;
    match outcome {
        Ok(result) => result.expect("test time limit"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Creates the test's stream. NATS 2.9 occasionally fails a stream creation that races with
/// the deletion of another stream ("could not create storage directory"), which parallel tests
/// on a shared server do; the relay and the runtime retry, and so does this.
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

/// Event `n` at position `n`: lesson events when even, tutor events when odd.
fn event(n: u64) -> RecordedEvent {
    let (stream, event_type) = if n.is_multiple_of(2) {
        ("lesson-1", "repit.lesson.v1.LessonScheduled")
    } else {
        ("tutor-1", "repit.tutor.v1.TutorRegistered")
    };
    RecordedEvent {
        stream: StreamName::parse(stream).expect("valid stream name"),
        revision: n / 2,
        position: Position::new(n, n),
        id: EventId::new(),
        event_type: event_type.to_owned(),
        content_type: ContentType::Json,
        data: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        metadata: Bytes::new(),
        // Stores keep microseconds, and so does the envelope.
        created: DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now"),
    }
}

async fn publish(context: &Context, options: &RelayOptions, events: &[RecordedEvent]) {
    for event in events {
        let (subject, headers, payload) = envelope::encode(&options.subject_prefix, event);
        context
            .publish_with_headers(subject, headers, payload)
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }
}

fn lessons(name: &str) -> FeedSpec {
    FeedSpec {
        name: name.to_owned(),
        event_type_prefixes: vec!["repit.lesson.v1.".to_owned()],
        after: None,
        replay: false,
    }
}

/// Reads batches (acknowledging each) until the feed reports the live end; returns the
/// events and the last position reported.
async fn read_to_end(
    feed: &mut dyn Feed,
    max: usize,
) -> (Vec<RecordedEvent>, Option<Position>, usize) {
    let mut events = Vec::new();
    let mut position = None;
    let mut batches = 0;
    loop {
        let batch = tokio::time::timeout(WAIT, feed.next_batch(max))
            .await
            .expect("a batch in time")
            .expect("a batch");
        assert!(batch.events.len() <= max);
        batches += 1;
        events.extend(batch.events.iter().cloned());
        position = batch.position.or(position);
        let caught_up = batch.caught_up;
        batch.ack().await.expect("ack");
        if caught_up {
            return (events, position, batches);
        }
    }
}

fn ns(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position.commit()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_feed_resumes_after_its_acks_and_a_replay_reads_everything() {
    with_nats(|context, options, unique| async move {
        let first: Vec<_> = (1..=20).map(event).collect();
        publish(&context, &options, &first).await;
        let source = JetStreamSource::new(context.clone(), options.clone());
        let spec = lessons(&format!("lessons.{unique}"));

        let mut feed = source.open(&spec).await.expect("open live feed");
        let (events, position, batches) = read_to_end(&mut feed, 4).await;
        assert_eq!(ns(&events), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
        assert_eq!(
            events,
            first
                .iter()
                .filter(|e| e.position.commit() % 2 == 0)
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(position, Some(Position::new(20, 20)));
        assert!(batches >= 3, "at most 4 events per batch");
        drop(feed);

        // Reopened at the checkpoint: nothing is redelivered; it says so at once, then waits
        // for new events.
        let spec = FeedSpec {
            after: position,
            ..spec
        };
        let mut feed = source.open(&spec).await.expect("reopen live feed");
        let batch = tokio::time::timeout(WAIT, feed.next_batch(100))
            .await
            .expect("in time")
            .expect("batch");
        assert!(batch.caught_up && batch.events.is_empty() && batch.position.is_none());
        publish(&context, &options, &[event(21), event(22)]).await;
        let (events, position, _) = read_to_end(&mut feed, 100).await;
        assert_eq!(ns(&events), [22]);
        assert_eq!(position, Some(Position::new(22, 22)));
        drop(feed);

        // A reader that dies holding delivered, unapplied (unacknowledged) events: its
        // successor, opened at the checkpoint, gets them again at once.
        let spec = FeedSpec {
            after: position,
            ..spec
        };
        let mut feed = source.open(&spec).await.expect("open live feed");
        publish(&context, &options, &[event(23), event(24)]).await;
        // The first batch may be the "at the live end" notice of the open; read until delivered.
        loop {
            let delivered = tokio::time::timeout(WAIT, feed.next_batch(100))
                .await
                .expect("in time")
                .expect("batch");
            if delivered.position.is_some() {
                break; // dropped without an ack, as a killed process would
            }
        }
        drop(feed);
        let mut feed = source.open(&spec).await.expect("reopen after a crash");
        let (events, position, _) = read_to_end(&mut feed, 100).await;
        assert_eq!(ns(&events), [24]);
        assert_eq!(position, Some(Position::new(24, 24)));
        drop(feed);
        let spec = FeedSpec {
            after: position,
            ..spec
        };

        // A rebuild reads everything from the start and leaves the durable consumer alone.
        let replay = FeedSpec {
            replay: true,
            ..spec.clone()
        };
        let mut feed = source.open(&replay).await.expect("open replay feed");
        let (events, _, _) = read_to_end(&mut feed, 100).await;
        assert_eq!(ns(&events), (1..=12).map(|n| 2 * n).collect::<Vec<_>>());
        drop(feed);
        let mut feed = source.open(&spec).await.expect("reopen live feed");
        let batch = feed.next_batch(100).await.expect("batch");
        assert!(batch.caught_up && batch.events.is_empty());

        let stream = context
            .get_stream(&options.stream_name)
            .await
            .expect("stream");
        let name = JetStreamSource::consumer_name(&spec.name);
        let info = stream.consumer_info(&name).await.expect("durable consumer");
        assert_eq!(info.num_ack_pending, 0);
        assert_eq!(info.num_pending, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_skips_what_the_checkpoint_covers() {
    with_nats(|context, options, unique| async move {
        publish(&context, &options, &(1..=10).map(event).collect::<Vec<_>>()).await;
        let source = JetStreamSource::new(context.clone(), options.clone());
        let spec = FeedSpec {
            after: Some(Position::new(6, 6)),
            event_type_prefixes: Vec::new(),
            ..lessons(&format!("all-{unique}"))
        };
        let mut feed = source.open(&spec).await.expect("open");
        let (events, position, _) = read_to_end(&mut feed, 100).await;
        assert_eq!(ns(&events), [7, 8, 9, 10]);
        assert_eq!(position, Some(Position::new(10, 10)));

        // A replay ignores the checkpoint.
        let replay = FeedSpec {
            replay: true,
            ..spec
        };
        let mut feed = source.open(&replay).await.expect("open replay");
        let (events, _, _) = read_to_end(&mut feed, 100).await;
        assert_eq!(ns(&events), (1..=10).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_feed_is_at_the_live_end_and_a_malformed_message_is_reported() {
    with_nats(|context, options, unique| async move {
        let source = JetStreamSource::new(context.clone(), options.clone());
        let spec = lessons(&format!("lessons-{unique}"));
        let mut replay = source
            .open(&FeedSpec {
                replay: true,
                ..spec.clone()
            })
            .await
            .expect("open replay on an empty stream");
        let batch = replay.next_batch(10).await.expect("batch");
        assert!(batch.caught_up && batch.events.is_empty());

        let mut feed = source.open(&spec).await.expect("open live feed");
        let batch = feed.next_batch(10).await.expect("batch");
        assert!(batch.caught_up);
        publish(&context, &options, &[event(2)]).await;
        context
            .publish(
                format!("{}.lesson.Foreign", options.subject_prefix),
                Bytes::from_static(b"not an event"),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
        // The good event first (it may come alone or with the bad one held back), then the error.
        let mut seen = Vec::new();
        let error = loop {
            match tokio::time::timeout(WAIT, feed.next_batch(10))
                .await
                .expect("in time")
            {
                Ok(batch) => {
                    seen.extend(ns(&batch.events));
                    batch.ack().await.expect("ack");
                }
                Err(error) => break error,
            }
        };
        assert_eq!(seen, [2]);
        assert!(
            matches!(error, FeedError::Malformed { sequence: 2, .. }),
            "{error:?}"
        );
    })
    .await;
}
