//! Reads: streams and `$all` both ways with limits, round trips, `$all` order, no skipped events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;

use super::{
    STEP, StoreFactory, assert_strictly_increasing, fresh, ids, new_ids, next_event,
    next_event_in_any_phase, numbered, numbered_batch, ours, read_all_with, read_stream,
    read_stream_with, revisions, stream, unique_prefix,
};
use crate::model::{
    AllFilter, ContentType, ExpectedRevision, NewEvent, Position, ReadAllOptions,
    ReadStreamOptions, RecordedEvent, SubscribeFrom, SubscribeToAllOptions,
};
use crate::store::EventStore;

/// A stream reads forwards and backwards, from the ends or from a revision (inclusive), with
/// limits, across pages; an absent stream reads as empty.
pub async fn streams_read_forwards_and_backwards_with_limits<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "ten");
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..5))
        .await
        .expect("append");
    store
        .append(&s, ExpectedRevision::Exact(4), numbered_batch(5..10))
        .await
        .expect("append");
    let read = |options: ReadStreamOptions| {
        let (store, s) = (&store, &s);
        async move { revisions(&read_stream_with(store, s, options).await.expect("read")) }
    };
    let forwards = ReadStreamOptions::forwards();
    let backwards = ReadStreamOptions::backwards();
    assert_eq!(read(forwards).await, (0..10).collect::<Vec<_>>());
    assert_eq!(read(forwards.limit(3)).await, vec![0, 1, 2]);
    assert_eq!(
        read(forwards.from_revision(5).limit(3)).await,
        vec![5, 6, 7]
    );
    assert_eq!(read(forwards.from_revision(8).limit(5)).await, vec![8, 9]);
    assert_eq!(read(forwards.from_revision(10)).await, Vec::<u64>::new());
    assert_eq!(read(forwards.limit(0)).await, Vec::<u64>::new());
    assert_eq!(read(backwards).await, (0..10).rev().collect::<Vec<_>>());
    assert_eq!(read(backwards.limit(3)).await, vec![9, 8, 7]);
    assert_eq!(
        read(backwards.from_revision(4).limit(3)).await,
        vec![4, 3, 2]
    );
    assert_eq!(read(backwards.from_revision(1)).await, vec![1, 0]);
    assert_eq!(read(backwards.from_revision(20).limit(2)).await, vec![9, 8]);

    let absent = stream(&prefix, "absent");
    assert!(
        read_stream_with(&store, &absent, forwards)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        read_stream_with(&store, &absent, backwards)
            .await
            .expect("read")
            .is_empty()
    );

    // Long enough to need several pages in any backend.
    let long = stream(&prefix, "long");
    let mut expected = ExpectedRevision::NoStream;
    for chunk in 0..6 {
        let result = store
            .append(
                &long,
                expected,
                numbered_batch(chunk * 100..chunk * 100 + 100),
            )
            .await
            .expect("append");
        expected = ExpectedRevision::Exact(result.next_expected_revision);
    }
    let all: Vec<u64> = revisions(&read_stream(&store, &long).await);
    assert_eq!(all, (0..600).collect::<Vec<_>>());
    let back = read_stream_with(&store, &long, backwards.limit(550))
        .await
        .expect("read");
    assert_eq!(revisions(&back), (50..600).rev().collect::<Vec<_>>());
    let middle = read_stream_with(&store, &long, forwards.from_revision(123).limit(300))
        .await
        .expect("read");
    assert_eq!(revisions(&middle), (123..423).collect::<Vec<_>>());
}

/// `$all` reads forwards and backwards, from the ends or from a position (inclusive), with
/// limits and with stream-prefix and event-type-prefix filters.
pub async fn all_reads_forwards_and_backwards_with_limits_and_filters<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let (a, b) = (stream(&prefix, "a"), stream(&prefix, "b"));
    let mut appended = Vec::new();
    for n in 0..3 {
        let ea = NewEvent::json("conformance.A", format!(r#"{{"n":{n}}}"#));
        let eb = NewEvent::json("conformance.B", format!(r#"{{"n":{n}}}"#));
        appended.push(ea.id);
        appended.push(eb.id);
        store
            .append(&a, ExpectedRevision::Any, vec![ea])
            .await
            .expect("append");
        store
            .append(&b, ExpectedRevision::Any, vec![eb])
            .await
            .expect("append");
    }
    let mine = AllFilter::default().stream_prefix(&prefix);
    let read = |options: ReadAllOptions| {
        let store = &store;
        async move { read_all_with(store, options).await }
    };
    let forwards = ReadAllOptions::forwards().filter(mine.clone());
    let backwards = ReadAllOptions::backwards().filter(mine.clone());
    let all = read(forwards.clone()).await;
    assert_eq!(ids(&all), appended, "$all holds the events in append order");
    assert_strictly_increasing(&all);
    let mut reversed = appended.clone();
    reversed.reverse();
    assert_eq!(ids(&read(backwards.clone()).await), reversed);
    assert_eq!(ids(&read(forwards.clone().limit(2)).await), appended[..2]);
    assert_eq!(ids(&read(backwards.clone().limit(2)).await), reversed[..2]);
    assert_eq!(
        ids(&read(forwards.clone().from_position(all[2].position)).await),
        appended[2..]
    );
    assert_eq!(
        ids(&read(forwards.clone().from_position(all[2].position).limit(2)).await),
        appended[2..4]
    );
    assert_eq!(
        ids(&read(backwards.clone().from_position(all[3].position)).await),
        reversed[2..]
    );

    let only_a = read(
        ReadAllOptions::forwards().filter(AllFilter::default().stream_prefix(format!("{prefix}a"))),
    )
    .await;
    assert_eq!(
        ids(&only_a),
        appended.iter().step_by(2).copied().collect::<Vec<_>>()
    );
    let only_b_type =
        read(ReadAllOptions::forwards().filter(mine.clone().event_type_prefix("conformance.B")))
            .await;
    assert_eq!(
        ids(&only_b_type),
        appended
            .iter()
            .skip(1)
            .step_by(2)
            .copied()
            .collect::<Vec<_>>()
    );
    let both = AllFilter::default()
        .stream_prefix(format!("{prefix}b"))
        .stream_prefix(format!("{prefix}a"));
    assert_eq!(
        ids(&read(ReadAllOptions::forwards().filter(both)).await),
        appended
    );
    assert_eq!(
        ids(&read(ReadAllOptions::forwards().filter(mine.clone().exclude_system())).await),
        appended
    );
    let none =
        read(ReadAllOptions::forwards().filter(mine.clone().event_type_prefix("conformance.C")))
            .await;
    assert!(none.is_empty());

    // Unfiltered reads see the same positions.
    let first = read(
        ReadAllOptions::forwards()
            .from_position(all[0].position)
            .limit(1),
    )
    .await;
    assert_eq!(
        first,
        all[..1],
        "an unfiltered read from a position starts at that event"
    );
    let last = read(ReadAllOptions::backwards().limit(1)).await;
    assert!(
        last.first().is_some_and(|e| e.position >= all[5].position),
        "backwards from the end starts at the newest"
    );
    assert!(read(ReadAllOptions::forwards().limit(0)).await.is_empty());
}

/// What was appended comes back unchanged through every read path: id, stream, revision, type,
/// content type, data (including non-UTF-8 bytes), metadata, and a creation time taken when
/// the append ran.
pub async fn an_event_round_trips_its_id_type_data_metadata_and_time<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "round-trip");
    let appended = vec![
        NewEvent::json(
            "conformance.Json",
            r#"{"text":"ünïcødé ✓","n":[1,2.5,null]}"#,
        )
        .with_metadata(r#"{"correlation_id":"c-1"}"#),
        NewEvent::protobuf("conformance.Binary", vec![0_u8, 159, 146, 150, 255, 0])
            .with_metadata(vec![1_u8, 2, 255, 0]),
        NewEvent::protobuf("conformance.Empty", Bytes::new()),
    ];
    // Wide enough for a server whose clock differs a little from ours.
    let slack = chrono::Duration::seconds(5);
    let before = Utc::now() - slack;
    let result = store
        .append(&s, ExpectedRevision::NoStream, appended.clone())
        .await
        .expect("append");
    let after = Utc::now() + slack;

    let read = read_stream(&store, &s).await;
    assert_eq!(read.len(), 3);
    for (revision, (recorded, sent)) in read.iter().zip(&appended).enumerate() {
        assert_eq!(recorded.stream, s);
        assert_eq!(recorded.revision, revision as u64);
        assert_eq!(recorded.id, sent.id);
        assert_eq!(recorded.event_type, sent.event_type);
        assert_eq!(recorded.content_type, sent.content_type);
        assert_eq!(recorded.data, sent.data, "data of {}", sent.event_type);
        assert_eq!(
            recorded.metadata, sent.metadata,
            "metadata of {}",
            sent.event_type
        );
        assert!(
            before <= recorded.created && recorded.created <= after,
            "created {} is not between {before} and {after}",
            recorded.created
        );
    }
    assert_eq!(read[0].content_type, ContentType::Json);
    assert_eq!(read[1].content_type, ContentType::Protobuf);
    assert_strictly_increasing(&read);
    assert_eq!(
        read[2].position, result.position,
        "an append reports its last event's position"
    );

    assert_eq!(
        ours(&store, &prefix).await,
        read,
        "$all returns the same events"
    );
    let mut subscription = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    for recorded in &read {
        assert_eq!(
            &next_event(&mut subscription).await,
            recorded,
            "a stream subscription returns the same events"
        );
    }
    let filter = AllFilter::default().stream_prefix(&prefix);
    let mut subscription =
        store.subscribe_to_all(SubscribeToAllOptions::from_start().filter(filter));
    for recorded in &read {
        assert_eq!(
            &next_event(&mut subscription).await,
            recorded,
            "an $all subscription returns the same events"
        );
    }
}

/// `$all` is in completion order: an append that finished before another started has lower
/// positions, and the events of one append are contiguous in `$all`, with nothing between them,
/// also when appends run concurrently.
pub async fn all_is_ordered_by_completion_and_batches_are_contiguous<F: StoreFactory>(factory: &F) {
    struct Batch {
        ids: Vec<crate::model::EventId>,
        started: Instant,
        finished: Instant,
        last: Position,
    }
    let (_db, store) = fresh(factory).await;
    let store = Arc::new(store);
    let prefix = unique_prefix();
    let mut batches = Vec::new();
    // One writer: every append finishes before the next starts.
    for n in 0..12 {
        let s = stream(&prefix, &format!("seq-{}", n % 3));
        let events = numbered_batch(0..1 + n % 4);
        let ids = new_ids(&events);
        let started = Instant::now();
        let result = store
            .append(&s, ExpectedRevision::Any, events)
            .await
            .expect("append");
        batches.push(Batch {
            ids,
            started,
            finished: Instant::now(),
            last: result.position,
        });
    }
    for pair in batches.windows(2) {
        assert!(
            pair[0].last < pair[1].last,
            "a later append got a lower position"
        );
    }
    // Eight writers at once.
    let tasks: Vec<_> = (0..8)
        .map(|writer| {
            let (store, s) = (
                Arc::clone(&store),
                stream(&prefix, &format!("par-{writer}")),
            );
            tokio::spawn(async move {
                let mut batches = Vec::new();
                for n in 0..8 {
                    let events = numbered_batch(n * 3..n * 3 + 3);
                    let ids = new_ids(&events);
                    let started = Instant::now();
                    let result = store
                        .append(&s, ExpectedRevision::Any, events)
                        .await
                        .expect("append");
                    batches.push(Batch {
                        ids,
                        started,
                        finished: Instant::now(),
                        last: result.position,
                    });
                }
                batches
            })
        })
        .collect();
    for task in tasks {
        batches.extend(task.await.expect("writer task panicked"));
    }

    let all = ours(&*store, &prefix).await;
    assert_strictly_increasing(&all);
    let by_id: HashMap<_, _> = all.iter().map(|e| (e.id, e)).collect();
    let mut first_positions = Vec::new();
    for batch in &batches {
        let first = by_id
            .get(&batch.ids[0])
            .expect("every appended event is in $all");
        let last = by_id
            .get(&batch.ids[batch.ids.len() - 1])
            .expect("every appended event is in $all");
        assert_eq!(
            last.position, batch.last,
            "an append reports its last event's position"
        );
        // Unfiltered, so an event of any other writer between them would show.
        let stretch = read_all_with(
            &*store,
            ReadAllOptions::forwards()
                .from_position(first.position)
                .limit(batch.ids.len() as u64),
        )
        .await;
        assert_eq!(
            ids(&stretch),
            batch.ids,
            "a batch is not contiguous in $all"
        );
        first_positions.push(first.position);
    }
    for (a, batch_a) in batches.iter().enumerate() {
        for (b, batch_b) in batches.iter().enumerate() {
            if batch_a.finished < batch_b.started {
                assert!(
                    batch_a.last < first_positions[b],
                    "append {a} finished before append {b} started but is not before it in $all"
                );
            }
        }
    }
    // Within a stream, $all order is revision order.
    let mut last_revision: HashMap<&str, u64> = HashMap::new();
    for event in &all {
        if let Some(previous) = last_revision.insert(event.stream.as_str(), event.revision) {
            assert!(
                previous < event.revision,
                "{} is out of revision order in $all",
                event.stream
            );
        }
    }
}

/// Eight writers append while another append's transaction is held open; a subscriber to `$all`
/// and a reader polling `$all` forwards from the last position it saw both end up with every
/// event exactly once, in `$all` order — none is skipped because it committed late.
pub async fn no_event_is_skipped_with_eight_concurrent_writers_and_a_transaction_held_open<
    F: StoreFactory,
>(
    factory: &F,
) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 25;
    let (_db, store) = fresh(factory).await;
    let store = Arc::new(store);
    let prefix = unique_prefix();
    let filter = AllFilter::default().stream_prefix(&prefix);

    let held_stream = stream(&prefix, "held");
    let held = factory
        .hold_append(&store, &held_stream, vec![numbered(0)])
        .await
        .expect("failed to hold an append open");
    let total = WRITERS * APPENDS * 2 + usize::from(held.is_some());

    let subscriber = {
        let mut subscription =
            store.subscribe_to_all(SubscribeToAllOptions::from_start().filter(filter.clone()));
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(total);
            while seen.len() < total {
                seen.push(next_event_in_any_phase(&mut subscription).await);
            }
            seen
        })
    };
    let poller = {
        let (store, filter) = (Arc::clone(&store), filter.clone());
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::with_capacity(total);
            let deadline = Instant::now() + STEP * 4;
            while seen.len() < total {
                assert!(
                    Instant::now() < deadline,
                    "the poller saw {} of {total} events",
                    seen.len()
                );
                let last = seen.last().map(|e| e.position);
                let options = match last {
                    Some(position) => ReadAllOptions::forwards().from_position(position),
                    None => ReadAllOptions::forwards(),
                };
                let page = read_all_with(&*store, options.filter(filter.clone()).limit(50)).await;
                seen.extend(
                    page.into_iter()
                        .filter(|e| last.is_none_or(|l| e.position > l)),
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, s) = (Arc::clone(&store), stream(&prefix, &format!("w{writer}")));
            tokio::spawn(async move {
                let mut expected = ExpectedRevision::NoStream;
                for n in 0..APPENDS {
                    let result = store
                        .append(&s, expected, numbered_batch(n * 2..n * 2 + 2))
                        .await
                        .expect("append");
                    expected = ExpectedRevision::Exact(result.next_expected_revision);
                }
            })
        })
        .collect();
    // Let the writers commit past the open transaction before it commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(held) = held {
        held.commit().await.expect("the held append failed");
    }
    for writer in writers {
        writer.await.expect("writer task panicked");
    }
    let subscribed = subscriber.await.expect("subscriber task panicked");
    let polled = poller.await.expect("poller task panicked");
    let all = ours(&*store, &prefix).await;
    assert_eq!(all.len(), total);
    assert_strictly_increasing(&all);
    assert_eq!(
        ids(&subscribed),
        ids(&all),
        "the subscriber missed or reordered events"
    );
    assert_eq!(
        ids(&polled),
        ids(&all),
        "the polling reader missed or reordered events"
    );
    assert_eq!(
        read_stream(&*store, &held_stream).await.len(),
        total - WRITERS * APPENDS * 2
    );
    // The subscription keeps working afterwards.
    let mut live = store
        .subscribe_to_all(SubscribeToAllOptions::after(all[total - 1].position).filter(filter));
    let extra = numbered(1);
    let extra_id = extra.id;
    store
        .append(&stream(&prefix, "w0"), ExpectedRevision::Any, vec![extra])
        .await
        .expect("append");
    assert_eq!(next_event(&mut live).await.id, extra_id);
}
