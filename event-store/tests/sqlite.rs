//! The conformance suite and SQLite-specific properties against the embedded backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use repit_event_store::conformance::{HeldAppend, StoreFactory};
use repit_event_store::sqlite::{Durability, SqliteOptions};
use repit_event_store::{
    Error, EventStore, ExpectedRevision, NewEvent, ReadAllOptions, Result, SqliteEventStore,
    StreamName, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
};
use tempfile::TempDir;

/// Each database is a file in its own temporary directory, removed when the test ends.
#[derive(Debug, Default)]
struct SqliteFactory;

#[derive(Debug)]
enum SqliteDatabase {
    Owned {
        _dir: TempDir,
        path: PathBuf,
    },
    /// Opened by the crash test's child process, which must not delete the parent's file.
    Attached(PathBuf),
}

impl SqliteDatabase {
    fn path(&self) -> &Path {
        match self {
            Self::Owned { path, .. } | Self::Attached(path) => path,
        }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    type Store = SqliteEventStore;
    type Database = SqliteDatabase;

    async fn create(&self) -> Result<SqliteDatabase> {
        let dir = tempfile::tempdir().map_err(Error::unavailable)?;
        let path = dir.path().join("events.db");
        Ok(SqliteDatabase::Owned { _dir: dir, path })
    }

    async fn open(&self, database: &SqliteDatabase) -> Result<SqliteEventStore> {
        SqliteEventStore::open(database.path()).await
    }

    fn locator(&self, database: &SqliteDatabase) -> String {
        database.path().display().to_string()
    }

    fn attach(&self, locator: &str) -> SqliteDatabase {
        SqliteDatabase::Attached(PathBuf::from(locator))
    }

    async fn hold_append(
        &self,
        store: &SqliteEventStore,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Option<HeldAppend>> {
        store.hold_append(stream, events).await.map(Some)
    }
}

mod conformance {
    repit_event_store::conformance_tests!(super::SqliteFactory);
}

const LIMIT: Duration = Duration::from_secs(60);

fn name(s: &str) -> StreamName {
    StreamName::parse(s).expect("valid stream name")
}

fn event(n: u64) -> NewEvent {
    NewEvent::json("test.Numbered", format!(r#"{{"n":{n}}}"#))
}

async fn positions(store: &SqliteEventStore) -> Vec<u64> {
    let events: Vec<_> = store
        .read_all(ReadAllOptions::forwards())
        .try_collect()
        .await
        .expect("read $all");
    events.iter().map(|e| e.position.commit()).collect()
}

#[tokio::test]
async fn positions_count_up_from_one_without_gaps_even_after_refused_and_rolled_back_appends() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteEventStore::open(dir.path().join("e.db"))
            .await
            .expect("open");
        let s = name("gaps-1");
        store
            .append(&s, ExpectedRevision::NoStream, vec![event(0), event(1)])
            .await
            .expect("append");
        assert!(
            store
                .append(&s, ExpectedRevision::NoStream, vec![event(2)])
                .await
                .is_err()
        );
        // Writes two rows before hitting a stored id, then rolls back.
        let stored = store
            .read_stream(&s, Default::default())
            .try_collect::<Vec<_>>()
            .await
            .expect("read");
        let clash = vec![event(3), event(4), event(5).with_id(stored[0].id)];
        assert!(matches!(
            store.append(&s, ExpectedRevision::Exact(1), clash).await,
            Err(Error::IdempotencyConflict { .. })
        ));
        let last = store
            .append(&name("gaps-2"), ExpectedRevision::Any, vec![event(6)])
            .await
            .expect("append");
        assert_eq!(positions(&store).await, vec![1, 2, 3]);
        assert_eq!((last.position.commit(), last.position.prepare()), (3, 3));
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_share_commits_and_leave_no_gaps() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteEventStore::open(dir.path().join("e.db"))
            .await
            .expect("open");
        let tasks: Vec<_> = (0..64)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let s = name(&format!("writer-{writer}"));
                    for n in 0..20 {
                        store
                            .append(&s, ExpectedRevision::Any, vec![event(n)])
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer panicked");
        }
        assert_eq!(positions(&store).await, (1..=64 * 20).collect::<Vec<_>>());
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_keep_positions_gap_free_and_see_each_others_events() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("e.db");
        let options = SqliteOptions {
            poll_interval: Duration::from_millis(50),
            ..SqliteOptions::new(&path)
        };
        // Two stores stand in for two processes: each has its own writer and wake-ups.
        let first = SqliteEventStore::open_with(options.clone())
            .await
            .expect("open");
        let second = SqliteEventStore::open_with(options).await.expect("open");
        let mut subscription = first.subscribe_to_all(SubscribeToAllOptions::from_start());
        assert_eq!(
            subscription.next().await.expect("item").expect("ok"),
            SubscriptionItem::CaughtUp
        );
        let writers: Vec<_> = [first.clone(), second.clone()]
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                tokio::spawn(async move {
                    for n in 0..50 {
                        store
                            .append(
                                &name(&format!("s-{i}")),
                                ExpectedRevision::Any,
                                vec![event(n)],
                            )
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer panicked");
        }
        let mut delivered = Vec::new();
        while delivered.len() < 100 {
            match subscription.next().await.expect("item").expect("ok") {
                SubscriptionItem::Event(e) => delivered.push(e.position.commit()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delivered, (1..=100).collect::<Vec<_>>());
        assert_eq!(positions(&second).await, delivered);
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn subscriptions_end_with_an_error_once_the_store_is_dropped() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteEventStore::open(dir.path().join("e.db"))
            .await
            .expect("open");
        let mut subscription = store.subscribe_to_stream(&name("s-1"), SubscribeFrom::Start);
        assert_eq!(
            subscription.next().await.expect("item").expect("ok"),
            SubscriptionItem::CaughtUp
        );
        drop(store);
        assert!(matches!(
            subscription.next().await,
            Some(Err(Error::Unavailable(_)))
        ));
        assert!(subscription.next().await.is_none());
    })
    .await
    .expect("time limit");
}

#[tokio::test]
async fn the_database_uses_wal_and_survives_reopening_with_normal_durability() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("e.db");
        let options = SqliteOptions {
            durability: Durability::Normal,
            ..SqliteOptions::new(&path)
        };
        let store = SqliteEventStore::open_with(options.clone())
            .await
            .expect("open");
        store
            .append(&name("s-1"), ExpectedRevision::NoStream, vec![event(0)])
            .await
            .expect("append");
        drop(store);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
            "sqlite://{}",
            path.display()
        ))
        .await
        .expect("raw connection");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .expect("pragma");
        assert_eq!(mode, "wal");
        let reopened = SqliteEventStore::open_with(options).await.expect("reopen");
        assert_eq!(positions(&reopened).await, vec![1]);
    })
    .await
    .expect("time limit");
}
