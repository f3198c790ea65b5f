//! Appends: revision rules, concurrency, atomic batches, idempotent retries, stream names.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Barrier;

use super::{
    StoreFactory, fresh, ids, new_ids, numbered, numbered_batch, ours, read_stream, revisions,
    stream, unique_prefix,
};
use crate::error::{Error, InvalidEventReason, Result};
use crate::model::{
    CurrentRevision, EventId, ExpectedRevision, InvalidStreamName, NewEvent, StreamMetadata,
    StreamName,
};
use crate::store::EventStore;

#[track_caller]
fn assert_wrong_expected<T: std::fmt::Debug>(
    result: Result<T>,
    stream: &StreamName,
    expected: ExpectedRevision,
    actual: CurrentRevision,
) {
    match result {
        Err(Error::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (&s, e, a),
                (stream, expected, actual),
                "wrong expected version details"
            );
        }
        other => {
            panic!("expected a wrong expected version ({expected} vs {actual}), got {other:?}")
        }
    }
}

/// `Any`, `NoStream`, `StreamExists` and `Exact(n)` succeed and fail exactly as in EventStoreDB,
/// a refusal reports the actual state, and refused appends write nothing.
pub async fn revision_rules_follow_the_expected_revision<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "rules");
    use CurrentRevision::{Current, NoStream};
    use ExpectedRevision as E;

    assert_wrong_expected(
        store.append(&s, E::StreamExists, vec![numbered(0)]).await,
        &s,
        E::StreamExists,
        NoStream,
    );
    assert_wrong_expected(
        store.append(&s, E::Exact(0), vec![numbered(0)]).await,
        &s,
        E::Exact(0),
        NoStream,
    );

    let created = store
        .append(&s, E::NoStream, numbered_batch(0..2))
        .await
        .expect("no stream creates");
    assert_eq!(created.next_expected_revision, 1);
    assert_wrong_expected(
        store.append(&s, E::NoStream, vec![numbered(9)]).await,
        &s,
        E::NoStream,
        Current(1),
    );
    assert_wrong_expected(
        store.append(&s, E::Exact(0), vec![numbered(9)]).await,
        &s,
        E::Exact(0),
        Current(1),
    );
    assert_wrong_expected(
        store.append(&s, E::Exact(2), vec![numbered(9)]).await,
        &s,
        E::Exact(2),
        Current(1),
    );

    let exact = store
        .append(&s, E::Exact(1), vec![numbered(2)])
        .await
        .expect("exact revision");
    assert_eq!(exact.next_expected_revision, 2);
    let exists = store
        .append(&s, E::StreamExists, vec![numbered(3)])
        .await
        .expect("stream exists");
    assert_eq!(exists.next_expected_revision, 3);
    let any = store
        .append(&s, E::Any, numbered_batch(4..6))
        .await
        .expect("any");
    assert_eq!(any.next_expected_revision, 5);
    assert!(created.position < exact.position && exact.position < exists.position);
    assert!(exists.position < any.position);

    let other = stream(&prefix, "any-creates");
    let first = store
        .append(&other, E::Any, vec![numbered(0)])
        .await
        .expect("any creates");
    assert_eq!(first.next_expected_revision, 0);

    let events = read_stream(&store, &s).await;
    assert_eq!(
        revisions(&events),
        vec![0, 1, 2, 3, 4, 5],
        "refused appends wrote something"
    );
    let numbers: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    assert_eq!(
        numbers,
        (0..6)
            .map(|n| format!(r#"{{"n":{n}}}"#))
            .collect::<Vec<_>>()
    );
}

/// When many writers append with the same expected revision at once, exactly one succeeds and
/// every other one gets a wrong expected version; the stream has no gaps or duplicates.
pub async fn only_one_of_concurrent_appends_with_the_same_expected_revision_wins<
    F: StoreFactory,
>(
    factory: &F,
) {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 5;
    let (_db, store) = fresh(factory).await;
    let store = Arc::new(store);
    let s = stream(&unique_prefix(), "contended");
    let mut expected = ExpectedRevision::NoStream;
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, s, barrier) = (Arc::clone(&store), s.clone(), Arc::clone(&barrier));
                let event = numbered(round * 100 + writer);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let id = event.id;
                    (id, store.append(&s, expected, vec![event]).await)
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            let (id, result) = task.await.expect("writer task panicked");
            match result {
                Ok(result) => won.push((id, result)),
                Err(Error::WrongExpectedVersion { .. }) => {}
                Err(other) => {
                    panic!("a losing writer must get a wrong expected version, got {other}")
                }
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {} writers won", won.len());
        let (id, result) = won.remove(0);
        assert_eq!(result.next_expected_revision, round as u64);
        winners.push(id);
        expected = ExpectedRevision::Exact(result.next_expected_revision);
    }
    let events = read_stream(&*store, &s).await;
    assert_eq!(
        ids(&events),
        winners,
        "the stream holds exactly the winners, in order"
    );
}

/// A batch with one bad event (bad type, bad JSON, repeated id, too large, empty) gets a typed
/// error and writes none of its events, on a new stream and on an existing one; a batch that
/// fails while being written (one id already stored) writes nothing either.
pub async fn a_batch_with_one_bad_event_writes_nothing<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let good = || vec![numbered(1), numbered(2)];
    let with_last = |bad: NewEvent| {
        let mut batch = good();
        batch.push(bad);
        batch
    };
    let duplicate = {
        let mut batch = good();
        batch.push(numbered(3).with_id(batch[0].id));
        batch
    };
    let max = store.limits().max_append_size;
    let oversized = with_last(NewEvent::protobuf(
        "conformance.Big",
        Bytes::from(vec![7_u8; max]),
    ));
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<NewEvent>, Check)> = vec![
        ("empty type", with_last(NewEvent::json("", "{}")), |e| {
            matches!(
                e,
                Error::InvalidEvent {
                    index: 2,
                    reason: InvalidEventReason::EmptyType
                }
            )
        }),
        (
            "reserved type",
            with_last(NewEvent::json("$metadata", "{}")),
            |e| {
                matches!(
                    e,
                    Error::InvalidEvent {
                        index: 2,
                        reason: InvalidEventReason::ReservedType
                    }
                )
            },
        ),
        (
            "control character in type",
            with_last(NewEvent::json("a\nb", "{}")),
            |e| {
                matches!(
                    e,
                    Error::InvalidEvent {
                        index: 2,
                        reason: InvalidEventReason::ControlCharacterInType
                    }
                )
            },
        ),
        (
            "non-utf-8 json",
            with_last(NewEvent::json("conformance.Bad", vec![0xff_u8, b'{'])),
            |e| {
                matches!(
                    e,
                    Error::InvalidEvent {
                        index: 2,
                        reason: InvalidEventReason::NotJson(_)
                    }
                )
            },
        ),
        (
            "malformed json",
            with_last(NewEvent::json("conformance.Bad", "{\"a\":")),
            |e| {
                matches!(
                    e,
                    Error::InvalidEvent {
                        index: 2,
                        reason: InvalidEventReason::NotJson(_)
                    }
                )
            },
        ),
        ("repeated id", duplicate, |e| {
            matches!(
                e,
                Error::InvalidEvent {
                    index: 2,
                    reason: InvalidEventReason::DuplicateId(_)
                }
            )
        }),
        ("oversized", oversized, |e| {
            matches!(e, Error::AppendTooLarge { .. })
        }),
        ("empty", Vec::new(), |e| matches!(e, Error::EmptyAppend)),
    ];
    let existing = stream(&prefix, "existing");
    let first = store
        .append(&existing, ExpectedRevision::NoStream, vec![numbered(0)])
        .await
        .expect("setup append");
    for (index, (case, batch, check)) in cases.into_iter().enumerate() {
        let fresh_stream = stream(&prefix, &format!("new-{index}"));
        let result = store
            .append(&fresh_stream, ExpectedRevision::NoStream, batch.clone())
            .await;
        match &result {
            Err(error) if check(error) => {}
            other => panic!("{case}: unexpected outcome {other:?}"),
        }
        assert!(
            read_stream(&store, &fresh_stream).await.is_empty(),
            "{case}: events were written"
        );
        let result = store
            .append(&existing, ExpectedRevision::Exact(0), batch)
            .await;
        assert!(
            result.as_ref().is_err_and(check),
            "{case}: unexpected outcome {result:?}"
        );
        // The refused batch left the stream where it was: the same expectation still holds.
        assert_eq!(
            revisions(&read_stream(&store, &existing).await),
            vec![0],
            "{case}: events were written"
        );
    }
    // Fails in the middle of writing: the last id is already stored in this stream.
    let stored = read_stream(&store, &existing).await;
    let mut clashing = good();
    clashing.push(numbered(3).with_id(stored[0].id));
    let result = store
        .append(&existing, ExpectedRevision::Exact(0), clashing)
        .await;
    assert!(
        matches!(result, Err(Error::IdempotencyConflict { .. })),
        "a batch reusing a stored id must conflict, got {result:?}"
    );
    assert_eq!(
        revisions(&read_stream(&store, &existing).await),
        vec![0],
        "a partial batch was written"
    );
    let everything = ours(&store, &prefix).await;
    assert_eq!(everything.len(), 1, "$all shows events of refused batches");
    assert_eq!(everything[0].position, first.position);
}

/// Resending an append with the same event ids returns the original result and writes nothing,
/// even after the stream has moved on, whatever the expectation it is resent with.
pub async fn a_retried_append_returns_the_original_result_and_writes_nothing<F: StoreFactory>(
    factory: &F,
) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "retried");
    let batch = numbered_batch(0..2);
    let original = store
        .append(&s, ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("first append");
    for expected in [ExpectedRevision::NoStream, ExpectedRevision::Any] {
        let again = store
            .append(&s, expected, batch.clone())
            .await
            .expect("a retry succeeds");
        assert_eq!(
            again, original,
            "a retry with {expected} must return the original result"
        );
    }
    let next = vec![numbered(2)];
    let second = store
        .append(&s, ExpectedRevision::Exact(1), next.clone())
        .await
        .expect("second append");
    let third = store
        .append(&s, ExpectedRevision::Exact(2), vec![numbered(3)])
        .await
        .expect("third append");
    let again = store
        .append(&s, ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("an old retry succeeds");
    assert_eq!(
        again, original,
        "a retry after the stream moved on must return the original result"
    );
    for expected in [
        ExpectedRevision::Exact(1),
        ExpectedRevision::StreamExists,
        ExpectedRevision::Any,
    ] {
        let again = store
            .append(&s, expected, next.clone())
            .await
            .expect("a retry succeeds");
        assert_eq!(
            again, second,
            "a retry with {expected} must return the original result"
        );
    }
    let events = read_stream(&store, &s).await;
    let mut expected_ids = new_ids(&batch);
    expected_ids.extend(new_ids(&next));
    assert_eq!(ids(&events[..3]), expected_ids);
    assert_eq!(revisions(&events), vec![0, 1, 2, 3], "a retry wrote events");
    let all = ours(&store, &prefix).await;
    assert_eq!(all.len(), 4, "a retry wrote events to $all");
    assert_eq!(all[3].position, third.position);
}

/// A batch that shares only some ids with a stored append, or has them in another order, is an
/// idempotency conflict and writes nothing.
pub async fn a_partial_id_match_is_an_idempotency_conflict<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let prefix = unique_prefix();
    let s = stream(&prefix, "partial");
    let (a, b) = (numbered(0), numbered(1));
    store
        .append(&s, ExpectedRevision::NoStream, vec![a.clone(), b.clone()])
        .await
        .expect("first append");
    let c = numbered(2);
    let cases: [(&str, Vec<NewEvent>, EventId); 3] = [
        ("first id reused", vec![a.clone(), c.clone()], a.id),
        ("second id reused", vec![c.clone(), b.clone()], b.id),
        ("ids reordered", vec![b.clone(), a.clone()], b.id),
    ];
    for (case, batch, conflicting) in cases {
        match store.append(&s, ExpectedRevision::Any, batch).await {
            Err(Error::IdempotencyConflict { stream, event_id }) => {
                assert_eq!(
                    (&stream, event_id),
                    (&s, conflicting),
                    "{case}: conflict details"
                );
            }
            other => panic!("{case}: expected an idempotency conflict, got {other:?}"),
        }
    }
    assert_eq!(
        ids(&read_stream(&store, &s).await),
        vec![a.id, b.id],
        "a conflicting batch wrote events"
    );
}

/// Stream names are parsed at the edge (non-empty, at most 255 bytes, no control characters,
/// `$` reserved), and the store refuses every write to a system stream.
pub async fn invalid_stream_names_are_rejected<F: StoreFactory>(factory: &F) {
    let (_db, store) = fresh(factory).await;
    let too_long = "x".repeat(256);
    let refused = [
        ("", InvalidStreamName::Empty),
        (too_long.as_str(), InvalidStreamName::TooLong { len: 256 }),
        ("a\u{0}b", InvalidStreamName::ControlCharacter { index: 1 }),
        (
            "line\nbreak",
            InvalidStreamName::ControlCharacter { index: 4 },
        ),
        ("$all", InvalidStreamName::Reserved),
        ("$$lesson-1", InvalidStreamName::Reserved),
    ];
    for (name, reason) in refused {
        assert_eq!(StreamName::parse(name), Err(reason), "{name:?}");
    }
    let prefix = unique_prefix();
    let longest = format!("{prefix}{}", "é".repeat((255 - prefix.len()) / 2));
    let s = StreamName::parse(&longest).expect("a name within 255 bytes is valid");
    store
        .append(&s, ExpectedRevision::NoStream, vec![numbered(0)])
        .await
        .expect("a long unicode name works");
    assert_eq!(read_stream(&store, &s).await[0].stream, s);

    let system = StreamName::system(format!("${prefix}system")).expect("a valid system name");
    let reserved = |result: Result<()>| {
        matches!(
            result,
            Err(Error::InvalidStreamName(InvalidStreamName::Reserved))
        )
    };
    let appended = store
        .append(&system, ExpectedRevision::Any, vec![numbered(0)])
        .await;
    assert!(
        reserved(appended.map(drop)),
        "appending to a system stream must be refused"
    );
    assert!(reserved(
        store.delete_stream(&system, ExpectedRevision::Any).await
    ));
    assert!(reserved(
        store.tombstone_stream(&system, ExpectedRevision::Any).await
    ));
    let metadata = store
        .set_stream_metadata(&system, ExpectedRevision::Any, &StreamMetadata::default())
        .await;
    assert!(
        reserved(metadata.map(drop)),
        "setting metadata on a system stream must be refused"
    );
}
