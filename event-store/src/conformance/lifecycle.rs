//! Soft delete, tombstone, metadata, reopening, and a writer process killed mid-append.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{
    STEP, StoreFactory, expect_caught_up, fresh, ids, next_event, next_item, numbered,
    numbered_batch, ours, read_all_with, read_stream, read_stream_with, revisions, stream,
    unique_prefix,
};
use crate::error::Error;
use crate::model::{
    CurrentRevision, ExpectedRevision, NewEvent, ReadAllOptions, ReadStreamOptions, StreamMetadata,
    StreamName, SubscribeFrom, SubscriptionItem,
};
use crate::store::EventStore;

/// A soft-deleted stream reads as empty and counts as absent; an append recreates it with
/// revisions continuing where they stopped, and only the new events are visible. Deleting
/// checks the expected revision; deleting an absent stream succeeds.
pub async fn a_soft_deleted_stream_reads_empty_and_an_append_recreates_it<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "soft");
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..3))
        .await
        .expect("append");
    match store.delete_stream(&s, ExpectedRevision::Exact(1)).await {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::Current(2),
            ..
        }) => {}
        other => panic!("deleting with a stale revision must conflict, got {other:?}"),
    }
    store
        .delete_stream(&s, ExpectedRevision::Exact(2))
        .await
        .expect("soft delete");
    assert!(
        read_stream(&store, &s).await.is_empty(),
        "a soft-deleted stream reads as empty"
    );
    let backwards = read_stream_with(&store, &s, ReadStreamOptions::backwards())
        .await
        .expect("read");
    assert!(
        backwards.is_empty(),
        "a soft-deleted stream reads as empty backwards"
    );
    match store
        .append(&s, ExpectedRevision::StreamExists, vec![numbered(9)])
        .await
    {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::NoStream,
            ..
        }) => {}
        other => panic!("a soft-deleted stream must count as absent, got {other:?}"),
    }
    let mut subscription = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    expect_caught_up(&mut subscription).await;

    let recreated = store
        .append(&s, ExpectedRevision::NoStream, vec![numbered(3)])
        .await
        .expect("recreate");
    assert_eq!(
        recreated.next_expected_revision, 3,
        "revisions continue after a soft delete"
    );
    assert_eq!(revisions(&read_stream(&store, &s).await), vec![3]);
    assert_eq!(next_event(&mut subscription).await.revision, 3);
    let mut from_start = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    assert_eq!(
        next_event(&mut from_start).await.revision,
        3,
        "a subscription skips soft-deleted events"
    );
    expect_caught_up(&mut from_start).await;

    store
        .delete_stream(&s, ExpectedRevision::Any)
        .await
        .expect("soft delete again");
    let again = store
        .append(&s, ExpectedRevision::Any, numbered_batch(4..6))
        .await
        .expect("recreate");
    assert_eq!(again.next_expected_revision, 5);
    assert_eq!(revisions(&read_stream(&store, &s).await), vec![4, 5]);

    let absent = stream(&prefix, "never");
    store
        .delete_stream(&absent, ExpectedRevision::NoStream)
        .await
        .expect("deleting an absent stream");
    store
        .delete_stream(&absent, ExpectedRevision::Any)
        .await
        .expect("deleting an absent stream");
    match store
        .delete_stream(&absent, ExpectedRevision::StreamExists)
        .await
    {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::NoStream,
            ..
        }) => {}
        other => {
            panic!("deleting an absent stream expecting it to exist must conflict, got {other:?}")
        }
    }
}

/// A tombstoned stream refuses every read, write, delete, metadata change and subscription with
/// `StreamDeleted`, for good; tombstoning checks the expected revision and also works on a
/// stream that never existed, reserving its name.
pub async fn a_tombstoned_stream_is_gone_for_good<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "tomb");
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..2))
        .await
        .expect("append");
    let mut live = store.subscribe_to_stream(&s, SubscribeFrom::Start);
    assert_eq!(next_event(&mut live).await.revision, 0);
    match store.tombstone_stream(&s, ExpectedRevision::Exact(0)).await {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::Current(1),
            ..
        }) => {}
        other => panic!("tombstoning with a stale revision must conflict, got {other:?}"),
    }
    store
        .tombstone_stream(&s, ExpectedRevision::Exact(1))
        .await
        .expect("tombstone");
    check_tombstoned(&store, &s).await;

    let never = stream(&prefix, "never");
    store
        .tombstone_stream(&never, ExpectedRevision::NoStream)
        .await
        .expect("tombstone an absent stream");
    check_tombstoned(&store, &never).await;

    // $all keeps history: the relay and projections already saw those events.
    assert_eq!(ours(&store, &prefix).await.len(), 2);
}

async fn check_tombstoned<S: EventStore>(store: &S, s: &StreamName) {
    let deleted = |result: Result<(), Error>, what: &str| match result {
        Err(Error::StreamDeleted { stream }) => assert_eq!(&stream, s, "{what}"),
        other => {
            panic!("{what} on a tombstoned stream must fail with stream deleted, got {other:?}")
        }
    };
    for expected in [
        ExpectedRevision::Any,
        ExpectedRevision::NoStream,
        ExpectedRevision::StreamExists,
    ] {
        deleted(
            store.append(s, expected, vec![numbered(9)]).await.map(drop),
            "appending",
        );
    }
    deleted(
        read_stream_with(store, s, ReadStreamOptions::forwards())
            .await
            .map(drop),
        "reading",
    );
    deleted(
        read_stream_with(store, s, ReadStreamOptions::backwards())
            .await
            .map(drop),
        "reading backwards",
    );
    deleted(
        store.delete_stream(s, ExpectedRevision::Any).await,
        "deleting",
    );
    deleted(
        store.tombstone_stream(s, ExpectedRevision::Any).await,
        "tombstoning",
    );
    deleted(
        store.get_stream_metadata(s).await.map(drop),
        "reading metadata",
    );
    let metadata = StreamMetadata::default();
    deleted(
        store
            .set_stream_metadata(s, ExpectedRevision::Any, &metadata)
            .await
            .map(drop),
        "setting metadata",
    );
    let mut subscription = store.subscribe_to_stream(s, SubscribeFrom::Start);
    match tokio::time::timeout(STEP, subscription.next()).await {
        Ok(Some(Err(Error::StreamDeleted { .. }))) => {}
        other => panic!("subscribing to a tombstoned stream must fail, got {other:?}"),
    }
}

/// Metadata has its own expected revision (starting at 0, `NoStream` before the first write,
/// conflicts naming the `$$` stream), round-trips custom properties, and its max count, truncate
/// before and max age hide events from stream reads; setting it needs no events and creates no
/// stream.
pub async fn stream_metadata_has_its_own_expected_revision_and_limits_reads<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "meta");
    assert_eq!(store.get_stream_metadata(&s).await.expect("get"), None);
    let custom: BTreeMap<String, Value> = [
        ("owner".to_owned(), Value::from("tutor-1")),
        ("tags".to_owned(), serde_json::json!(["a", 1])),
    ]
    .into_iter()
    .collect();
    let capped = StreamMetadata {
        max_count: Some(2),
        custom: custom.clone(),
        ..Default::default()
    };
    assert_eq!(
        store
            .set_stream_metadata(&s, ExpectedRevision::NoStream, &capped)
            .await
            .expect("set"),
        0
    );
    match store
        .set_stream_metadata(&s, ExpectedRevision::NoStream, &capped)
        .await
    {
        Err(Error::WrongExpectedVersion {
            stream,
            actual: CurrentRevision::Current(0),
            ..
        }) => {
            assert_eq!(
                stream,
                s.metadata_stream(),
                "a metadata conflict names the $$ stream"
            );
        }
        other => panic!("setting metadata twice expecting none must conflict, got {other:?}"),
    }
    let read_back = store
        .get_stream_metadata(&s)
        .await
        .expect("get")
        .expect("metadata was set");
    assert_eq!((read_back.revision, &read_back.metadata), (0, &capped));
    assert!(
        read_stream(&store, &s).await.is_empty(),
        "metadata does not create events"
    );
    store
        .append(&s, ExpectedRevision::NoStream, numbered_batch(0..5))
        .await
        .expect("metadata does not create the stream");

    assert_eq!(
        revisions(&read_stream(&store, &s).await),
        vec![3, 4],
        "max count keeps the newest"
    );
    let backwards = read_stream_with(&store, &s, ReadStreamOptions::backwards())
        .await
        .expect("read");
    assert_eq!(revisions(&backwards), vec![4, 3]);

    let truncated = StreamMetadata {
        truncate_before: Some(4),
        ..Default::default()
    };
    assert_eq!(
        store
            .set_stream_metadata(&s, ExpectedRevision::Exact(0), &truncated)
            .await
            .expect("set"),
        1
    );
    assert_eq!(
        revisions(&read_stream(&store, &s).await),
        vec![4],
        "truncate before hides older events"
    );
    match store
        .set_stream_metadata(&s, ExpectedRevision::Exact(0), &truncated)
        .await
    {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::Current(1),
            ..
        }) => {}
        other => panic!("a stale metadata revision must conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .set_stream_metadata(&s, ExpectedRevision::Any, &StreamMetadata::default())
            .await
            .expect("set"),
        2
    );
    assert_eq!(
        revisions(&read_stream(&store, &s).await),
        vec![0, 1, 2, 3, 4],
        "cleared metadata shows everything"
    );
    // Appends do not move the metadata revision.
    assert_eq!(
        store
            .get_stream_metadata(&s)
            .await
            .expect("get")
            .map(|m| m.revision),
        Some(2)
    );

    let aged = StreamMetadata {
        max_age: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    store
        .set_stream_metadata(&s, ExpectedRevision::StreamExists, &aged)
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh_event = numbered(5);
    let fresh_id = fresh_event.id;
    store
        .append(&s, ExpectedRevision::Exact(4), vec![fresh_event])
        .await
        .expect("append");
    assert_eq!(
        ids(&read_stream(&store, &s).await),
        vec![fresh_id],
        "max age hides old events"
    );

    let reserved = StreamMetadata {
        custom: [("$acl".to_owned(), Value::Null)].into_iter().collect(),
        ..Default::default()
    };
    assert!(matches!(
        store
            .set_stream_metadata(&s, ExpectedRevision::Any, &reserved)
            .await,
        Err(Error::InvalidMetadata(_))
    ));
    // $all is not affected by stream metadata.
    assert_eq!(ours(&store, &prefix).await.len(), 6);
}

/// Dropping the store and opening the same database again finds every event (ids, data,
/// positions, times), every stream's state (soft-deleted, tombstoned) and metadata; appends
/// then continue after the old positions.
pub async fn reopening_the_store_keeps_everything<F: StoreFactory>(factory: &F) {
    let database = factory.create().await.expect("failed to create a database");
    let prefix = unique_prefix();
    let (a, b, soft, tomb) = (
        stream(&prefix, "a"),
        stream(&prefix, "b"),
        stream(&prefix, "soft"),
        stream(&prefix, "tomb"),
    );
    let metadata = StreamMetadata {
        custom: [("k".to_owned(), Value::from("v"))].into_iter().collect(),
        ..Default::default()
    };
    let before = {
        let store = factory
            .open(&database)
            .await
            .expect("failed to open a store");
        store
            .append(&a, ExpectedRevision::NoStream, numbered_batch(0..3))
            .await
            .expect("append");
        store
            .append(
                &b,
                ExpectedRevision::NoStream,
                vec![NewEvent::protobuf("conformance.Bin", vec![0_u8, 255])],
            )
            .await
            .expect("append");
        store
            .append(&soft, ExpectedRevision::NoStream, numbered_batch(0..2))
            .await
            .expect("append");
        store
            .append(&tomb, ExpectedRevision::NoStream, numbered_batch(0..1))
            .await
            .expect("append");
        store
            .delete_stream(&soft, ExpectedRevision::Exact(1))
            .await
            .expect("soft delete");
        store
            .tombstone_stream(&tomb, ExpectedRevision::Any)
            .await
            .expect("tombstone");
        store
            .set_stream_metadata(&a, ExpectedRevision::NoStream, &metadata)
            .await
            .expect("set metadata");
        ours(&store, &prefix).await
    };
    let store = factory
        .open(&database)
        .await
        .expect("failed to reopen the store");
    assert_eq!(
        ours(&store, &prefix).await,
        before,
        "$all changed across a reopen"
    );
    assert_eq!(revisions(&read_stream(&store, &a).await), vec![0, 1, 2]);
    assert_eq!(
        read_stream(&store, &b).await,
        before
            .iter()
            .filter(|e| e.stream == b)
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(
        read_stream(&store, &soft).await.is_empty(),
        "a soft delete was lost"
    );
    assert!(
        matches!(
            read_stream_with(&store, &tomb, ReadStreamOptions::forwards()).await,
            Err(Error::StreamDeleted { .. })
        ),
        "a tombstone was lost"
    );
    let kept = store
        .get_stream_metadata(&a)
        .await
        .expect("get")
        .expect("metadata was lost");
    assert_eq!((kept.revision, kept.metadata), (0, metadata));
    match store
        .append(&a, ExpectedRevision::NoStream, vec![numbered(9)])
        .await
    {
        Err(Error::WrongExpectedVersion {
            actual: CurrentRevision::Current(2),
            ..
        }) => {}
        other => panic!("the stream revision was lost, got {other:?}"),
    }
    let next = store
        .append(&a, ExpectedRevision::Exact(2), vec![numbered(3)])
        .await
        .expect("append");
    let last_before = before
        .last()
        .map(|e| e.position)
        .expect("events were written");
    assert!(
        next.position > last_before,
        "positions restarted after a reopen"
    );
    let recreated = store
        .append(&soft, ExpectedRevision::NoStream, vec![numbered(2)])
        .await
        .expect("append");
    assert_eq!(recreated.next_expected_revision, 2);
}

/// Environment variables that turn the crash test into its child writer.
const CRASH_LOCATOR_ENV: &str = "REPIT_EVENT_STORE_CRASH_LOCATOR";
const CRASH_PREFIX_ENV: &str = "REPIT_EVENT_STORE_CRASH_PREFIX";
/// What the child prints before each append and after each acknowledged one.
const STARTING: &str = "conformance-appending ";
const ACK: &str = "conformance-appended ";
const CRASH_BATCH: usize = 200;
/// Padding per event: 200 events of ~4 KiB make an ~800 KiB batch, slow enough to die inside.
const CRASH_PAD: usize = 4000;

/// A writer process killed with SIGKILL in the middle of appending large batches leaves each
/// batch entirely written or not at all, keeps every batch it acknowledged, and leaves a store
/// that opens and accepts appends.
///
/// The test re-runs its own test binary (`test_name` is its libtest name) as the writer, with
/// environment variables naming the database; in that child this function writes until killed.
pub async fn a_process_killed_in_the_middle_of_an_append_leaves_all_of_the_batch_or_none<
    F: StoreFactory,
>(
    factory: &F,
    test_name: &str,
) {
    if let (Ok(locator), Ok(prefix)) = (
        std::env::var(CRASH_LOCATOR_ENV),
        std::env::var(CRASH_PREFIX_ENV),
    ) {
        crash_child(factory, &locator, &prefix).await;
        return;
    }
    let database = factory.create().await.expect("failed to create a database");
    let locator = factory.locator(&database);
    let prefix = unique_prefix();
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut acknowledged = HashSet::new();
    for round in 0..4_u64 {
        let mut child = tokio::process::Command::new(&exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_LOCATOR_ENV, &locator)
            .env(CRASH_PREFIX_ENV, format!("{prefix}r{round}-"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("failed to start the writer process");
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let wanted = 2 + round as usize;
        let mut acks = 0;
        tokio::time::timeout(STEP * 2, async {
            loop {
                let line = lines.next_line().await.expect("read the child's output");
                let line = line.expect("the writer process exited before it was killed");
                if let Some(name) = line.strip_prefix(ACK) {
                    acknowledged.insert(name.to_owned());
                    acks += 1;
                } else if line.starts_with(STARTING) && acks >= wanted {
                    break;
                }
            }
        })
        .await
        .expect("the writer process did not append in time");
        // The child has just started an append (checking it, writing rows, committing): kill
        // it at a different point of that work each round.
        tokio::time::sleep(Duration::from_millis(1 + 3 * round)).await;
        child
            .start_kill()
            .expect("failed to kill the writer process");
        child
            .wait()
            .await
            .expect("failed to reap the writer process");
        // Appends acknowledged before the kill landed must survive it.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(name) = line.strip_prefix(ACK) {
                acknowledged.insert(name.to_owned());
            }
        }
    }
    let store = factory
        .open(&database)
        .await
        .expect("the store must reopen after a crash");
    let all = ours(&store, &prefix).await;
    let mut streams: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &all {
        streams
            .entry(event.stream.to_string())
            .or_default()
            .push(event.revision);
    }
    for (name, revisions) in &streams {
        assert_eq!(
            revisions,
            &(0..CRASH_BATCH as u64).collect::<Vec<_>>(),
            "stream {name} holds a partial batch"
        );
    }
    for name in &acknowledged {
        assert!(
            streams.contains_key(name),
            "acknowledged batch {name} was lost"
        );
    }
    // Each batch is contiguous in $all.
    for chunk in all.chunks(CRASH_BATCH) {
        assert!(
            chunk.iter().all(|e| e.stream == chunk[0].stream),
            "batches interleave in $all"
        );
    }
    let stretch = read_all_with(
        &store,
        ReadAllOptions::forwards()
            .from_position(all[0].position)
            .limit(CRASH_BATCH as u64),
    )
    .await;
    assert_eq!(
        stretch,
        all[..CRASH_BATCH],
        "a batch is not contiguous in $all"
    );
    let after = stream(&prefix, "after-crash");
    store
        .append(&after, ExpectedRevision::NoStream, vec![numbered(0)])
        .await
        .expect("appending after a crash");
    let mut subscription = store.subscribe_to_stream(&after, SubscribeFrom::Start);
    assert!(matches!(
        next_item(&mut subscription).await,
        SubscriptionItem::Event(_)
    ));
}

/// The child side of the crash test: appends large batches until killed (or a minute passes,
/// should the parent have died).
async fn crash_child<F: StoreFactory>(factory: &F, locator: &str, prefix: &str) {
    let database = factory.attach(locator);
    let store = factory
        .open(&database)
        .await
        .expect("the child failed to open the store");
    let pad = "x".repeat(CRASH_PAD);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut batch = 0_usize;
    while Instant::now() < deadline {
        let s = StreamName::parse(format!("{prefix}b{batch}")).expect("valid stream name");
        let events = (0..CRASH_BATCH)
            .map(|index| {
                let data = serde_json::json!({ "batch": batch, "index": index, "pad": pad });
                NewEvent::json("conformance.Crash", data.to_string())
            })
            .collect();
        println!("{STARTING}{s}");
        store
            .append(&s, ExpectedRevision::NoStream, events)
            .await
            .expect("the child failed to append");
        println!("{ACK}{s}");
        batch += 1;
    }
}
