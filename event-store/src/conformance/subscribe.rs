//! Catch-up subscriptions: history, caught up, live; resuming; slow consumers; checkpoints.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::{
    StoreFactory, expect_caught_up, fresh, ids, next_event, next_event_in_any_phase, next_item,
    numbered, numbered_batch, ours, read_stream, stream, unique_prefix,
};
use crate::model::{
    AllFilter, ExpectedRevision, Position, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
};
use crate::store::EventStore;

/// A stream subscription delivers the history, then `CaughtUp` once, then live events as they
/// are appended; from the end it delivers `CaughtUp` first; a stream that does not exist yet is
/// caught up at once and delivers its first event when it appears.
pub async fn a_stream_subscription_delivers_history_then_caught_up_then_live<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "sub");
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..5))
        .await
        .expect("append");
    let mut from_start = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    for revision in 0..5 {
        assert_eq!(next_event(&mut from_start).await.revision, revision);
    }
    expect_caught_up(&mut from_start).await;
    let mut from_end = store.subscribe_to_stream(&s, SubscribeFrom::End);
    expect_caught_up(&mut from_end).await;

    let later = stream(&prefix, "later");
    let mut not_yet = store.subscribe_to_stream(&later, SubscribeFrom::Start);
    expect_caught_up(&mut not_yet).await;

    store
        .append(&s, ExpectedRevision::Exact(4), numbered_batch(5..7))
        .await
        .expect("append");
    store
        .append(&s, ExpectedRevision::Exact(6), vec![numbered(7)])
        .await
        .expect("append");
    for revision in 5..8 {
        assert_eq!(next_event(&mut from_start).await.revision, revision);
        assert_eq!(next_event(&mut from_end).await.revision, revision);
    }
    let first = numbered(0);
    let first_id = first.id;
    store
        .append(&later, ExpectedRevision::NoStream, vec![first])
        .await
        .expect("append");
    let event = next_event(&mut not_yet).await;
    assert_eq!((event.id, event.revision), (first_id, 0));
}

/// An `$all` subscription delivers the history, then `CaughtUp`, then live events; from the
/// end it is caught up at once and delivers only what is appended afterwards.
pub async fn an_all_subscription_delivers_history_then_caught_up_then_live<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let (a, b) = (stream(&prefix, "a"), stream(&prefix, "b"));
    store
        .append(&a, ExpectedRevision::NoStream, numbered_batch(0..2))
        .await
        .expect("append");
    store
        .append(&b, ExpectedRevision::NoStream, vec![numbered(2)])
        .await
        .expect("append");
    let history = ids(&ours(&store, &prefix).await);
    let filter = AllFilter::default().stream_prefix(&prefix);
    let mut filtered = store.subscribe_to_all(SubscribeToAllOptions::from_start().filter(filter));
    for id in &history {
        assert_eq!(&next_event(&mut filtered).await.id, id);
    }
    expect_caught_up(&mut filtered).await;
    let mut from_end = store.subscribe_to_all(SubscribeToAllOptions::from_end());
    expect_caught_up(&mut from_end).await;

    let live = vec![numbered(3), numbered(4)];
    let live_ids: Vec<_> = live.iter().map(|e| e.id).collect();
    store
        .append(&b, ExpectedRevision::Exact(0), live)
        .await
        .expect("append");
    for id in &live_ids {
        assert_eq!(&next_event(&mut filtered).await.id, id);
    }
    // Unfiltered, other tests' events may interleave: look for ours in order.
    let mut found = Vec::new();
    while found.len() < live_ids.len() {
        let event = next_event(&mut from_end).await;
        assert!(
            !history.contains(&event.id),
            "a subscription from the end delivered history"
        );
        if event.stream == b {
            found.push(event.id);
        }
    }
    assert_eq!(found, live_ids);
}

/// Resuming after a revision or position delivers exactly what follows it, never the event
/// itself; resuming after the last event is caught up at once.
pub async fn subscriptions_resume_exclusive_of_the_given_position<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "resume");
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..5))
        .await
        .expect("append");
    let all = ours(&store, &prefix).await;

    let mut after_two = store.subscribe_to_stream(&s, SubscribeFrom::After(2));
    assert_eq!(next_event(&mut after_two).await.revision, 3);
    assert_eq!(next_event(&mut after_two).await.revision, 4);
    expect_caught_up(&mut after_two).await;
    let mut after_last = store.subscribe_to_stream(&s, SubscribeFrom::After(4));
    expect_caught_up(&mut after_last).await;

    let filter = AllFilter::default().stream_prefix(&prefix);
    let options = SubscribeToAllOptions::after(all[1].position).filter(filter.clone());
    let mut all_after = store.subscribe_to_all(options);
    for event in &all[2..] {
        assert_eq!(next_event(&mut all_after).await.id, event.id);
    }
    expect_caught_up(&mut all_after).await;
    let options = SubscribeToAllOptions::after(all[4].position).filter(filter);
    let mut all_after_last = store.subscribe_to_all(options);
    expect_caught_up(&mut all_after_last).await;

    store
        .append(&s, ExpectedRevision::Exact(4), vec![numbered(5)])
        .await
        .expect("append");
    assert_eq!(next_event(&mut after_last).await.revision, 5);
    assert_eq!(next_event(&mut after_two).await.revision, 5);
    assert_eq!(next_event(&mut all_after_last).await.revision, 5);
}

/// A consumer that drops its subscription at arbitrary points while a writer keeps appending,
/// and resumes after the last event it processed, ends up with every event exactly once, in
/// order — for a stream and for `$all`.
pub async fn a_dropped_subscription_resumes_without_losing_events<F: StoreFactory>(factory: &F) {
    const EVENTS: usize = 200;
    let (_db, store) = fresh(factory).await;
    let store = Arc::new(store);
    let prefix = unique_prefix();
    let s = stream(&prefix, "dropped");
    let writer = {
        let (store, s) = (Arc::clone(&store), s.clone());
        tokio::spawn(async move {
            for n in 0..EVENTS {
                store
                    .append(&s, ExpectedRevision::Any, vec![numbered(n)])
                    .await
                    .expect("append");
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let stream_consumer = {
        let (store, s) = (Arc::clone(&store), s.clone());
        tokio::spawn(async move {
            let mut received = Vec::with_capacity(EVENTS);
            let mut take = 1;
            while received.len() < EVENTS {
                let from = received
                    .last()
                    .map_or(SubscribeFrom::Start, |&r| SubscribeFrom::After(r));
                let mut subscription = store.subscribe_to_stream(&s, from);
                for _ in 0..take.min(EVENTS - received.len()) {
                    received.push(next_event_in_any_phase(&mut subscription).await.revision);
                }
                take = take % 37 + 1;
            }
            received
        })
    };
    let all_consumer = {
        let store = Arc::clone(&store);
        let filter = AllFilter::default().stream_prefix(&prefix);
        tokio::spawn(async move {
            let mut received: Vec<(Position, u64)> = Vec::with_capacity(EVENTS);
            let mut take = 5;
            while received.len() < EVENTS {
                let options = match received.last() {
                    Some(&(position, _)) => SubscribeToAllOptions::after(position),
                    None => SubscribeToAllOptions::from_start(),
                };
                let mut subscription = store.subscribe_to_all(options.filter(filter.clone()));
                for _ in 0..take.min(EVENTS - received.len()) {
                    let event = next_event_in_any_phase(&mut subscription).await;
                    received.push((event.position, event.revision));
                }
                take = take % 23 + 1;
            }
            received
        })
    };
    writer.await.expect("writer task panicked");
    let by_stream = stream_consumer.await.expect("consumer task panicked");
    assert_eq!(
        by_stream,
        (0..EVENTS as u64).collect::<Vec<_>>(),
        "the stream consumer lost or repeated events"
    );
    let by_all = all_consumer.await.expect("consumer task panicked");
    let revisions: Vec<u64> = by_all.iter().map(|&(_, r)| r).collect();
    assert_eq!(
        revisions,
        (0..EVENTS as u64).collect::<Vec<_>>(),
        "the $all consumer lost or repeated events"
    );
}

/// Subscribers that stop reading while thousands of events are appended, then read slowly,
/// still get every event in order: nothing is dropped for being late.
pub async fn a_slow_consumer_loses_nothing<F: StoreFactory>(factory: &F) {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 100;
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "slow");
    let mut by_stream = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    let filter = AllFilter::default().stream_prefix(&prefix);
    let mut by_all = store.subscribe_to_all(SubscribeToAllOptions::from_start().filter(filter));
    expect_caught_up(&mut by_stream).await;
    expect_caught_up(&mut by_all).await;
    // Read a little live, so both are waiting on live events, then stop reading.
    store
        .append(&s, ExpectedRevision::NoStream, vec![numbered(0)])
        .await
        .expect("append");
    assert_eq!(next_event(&mut by_stream).await.revision, 0);
    assert_eq!(next_event(&mut by_all).await.revision, 0);
    for batch in 0..BATCHES {
        let events = numbered_batch(1 + batch * PER_BATCH..1 + (batch + 1) * PER_BATCH);
        store
            .append(&s, ExpectedRevision::Any, events)
            .await
            .expect("append");
    }
    let total = (1 + BATCHES * PER_BATCH) as u64;
    for revision in 1..total {
        if revision % 250 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            next_event(&mut by_stream).await.revision,
            revision,
            "the stream subscriber lost events"
        );
        assert_eq!(
            next_event(&mut by_all).await.revision,
            revision,
            "the $all subscriber lost events"
        );
    }
    assert_eq!(read_stream(&store, &s).await.len() as u64, total);
}

/// A filtered `$all` subscription reports a checkpoint while filtered-out events go by, in
/// catch-up and live: checkpoints never go backwards, fall after the matching events already
/// delivered, and resuming after one loses none of the matching events that follow.
pub async fn a_filtered_all_subscription_emits_checkpoints<F: StoreFactory>(factory: &F) {
    const NOISE: usize = 300;
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let (wanted, noise) = (stream(&prefix, "wanted"), stream(&prefix, "noise"));
    let append_noise = |start: usize| {
        let (store, noise) = (&store, &noise);
        async move {
            for chunk in 0..NOISE / 50 {
                let events = numbered_batch(start + chunk * 50..start + chunk * 50 + 50);
                store
                    .append(noise, ExpectedRevision::Any, events)
                    .await
                    .expect("append");
            }
        }
    };
    let first = store
        .append(&wanted, ExpectedRevision::NoStream, vec![numbered(0)])
        .await
        .expect("append");
    append_noise(0).await;
    let second = store
        .append(&wanted, ExpectedRevision::Exact(0), vec![numbered(1)])
        .await
        .expect("append");

    let filter = AllFilter::default().stream_prefix(format!("{prefix}wanted"));
    let interval = NonZeroU32::new(1).expect("non-zero");
    let options = SubscribeToAllOptions::from_start()
        .filter(filter.clone())
        .checkpoint_interval(interval);
    let mut subscription = store.subscribe_to_all(options.clone());
    let mut checkpoints = Vec::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        match next_item(&mut subscription).await {
            SubscriptionItem::Event(event) => {
                assert!(
                    checkpoints.last().is_none_or(|c| *c < event.position),
                    "an event at or before a checkpoint"
                );
                events.push(event);
            }
            SubscriptionItem::Checkpoint(position) => {
                assert!(
                    checkpoints.last().is_none_or(|c| *c <= position),
                    "checkpoints went backwards"
                );
                if let Some(last) = events.last() {
                    assert!(
                        position >= last.position,
                        "a checkpoint before a delivered event"
                    );
                }
                checkpoints.push(position);
            }
            SubscriptionItem::CaughtUp => panic!("caught up before the history was delivered"),
        }
    }
    assert_eq!(events[0].position, first.position);
    assert_eq!(events[1].position, second.position);
    let between: Vec<Position> = checkpoints
        .iter()
        .copied()
        .filter(|c| first.position < *c && *c < second.position)
        .collect();
    assert!(
        !between.is_empty(),
        "no checkpoint while {NOISE} filtered-out events went by: {checkpoints:?}"
    );

    // Resuming after a checkpoint delivers the next matching event.
    let resume = SubscribeToAllOptions::after(between[0]).filter(filter.clone());
    let mut resumed = store.subscribe_to_all(resume);
    assert_eq!(next_event(&mut resumed).await.position, second.position);

    // Live: filtered-out events advance the checkpoint too.
    loop {
        match next_item(&mut subscription).await {
            SubscriptionItem::CaughtUp => break,
            SubscriptionItem::Checkpoint(_) => {}
            SubscriptionItem::Event(event) => panic!("unexpected event {}", event.position),
        }
    }
    append_noise(NOISE).await;
    let last_noise = ours(&store, &prefix)
        .await
        .last()
        .map(|e| e.position)
        .expect("noise was appended");
    loop {
        match next_item(&mut subscription).await {
            SubscriptionItem::Checkpoint(position) if position > second.position => {
                assert!(position <= last_noise, "a checkpoint beyond the last event");
                break;
            }
            SubscriptionItem::Checkpoint(_) => {}
            other => panic!("expected a live checkpoint, got {other:?}"),
        }
    }
}
