//! The conformance suite and PostgreSQL-specific properties against a real server.
//!
//! The server comes from `REPIT_TEST_POSTGRES_URL` (see `repit_tests::require`): without it the
//! tests print a skip notice and return, except under `CI=true`, where they fail. Every store
//! lives in a fresh schema of that database, so tests and runs never see each other's events.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use repit_event_store::conformance::{HeldAppend, StoreFactory};
use repit_event_store::{
    AllFilter, Error, EventStore, ExpectedRevision, NewEvent, PostgresEventStore, PostgresOptions,
    ReadAllOptions, Result, StreamName, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
};
use repit_tests::Backend;
use sqlx::{Connection, PgConnection};

/// Schemas made by this suite start with this, followed by their creation time in seconds.
const SCHEMA_PREFIX: &str = "repit_es_test_";

/// Schemas older than this are left over from earlier runs and dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct PostgresFactory {
    url: String,
}

impl PostgresFactory {
    /// The factory, or `None` (after a printed notice) when no server is configured.
    fn from_env() -> Option<Self> {
        repit_tests::require(Backend::Postgres).map(|url| Self { url })
    }

    fn options(&self, schema: &str) -> PostgresOptions {
        let mut options =
            PostgresOptions::from_url(&self.url, schema).expect("a valid postgres url");
        // Tests run many stores side by side; a few connections each are plenty.
        options.read_connections = 4;
        options
    }
}

/// A schema; dropped by a later run once it is stale rather than at the end of the test,
/// because a store may still hold connections to it then.
#[derive(Debug)]
struct PostgresDatabase {
    schema: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn drop_stale_schemas(connection: &mut PgConnection) {
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(&mut *connection)
            .await
            .unwrap_or_default();
    let cutoff = now_secs().saturating_sub(STALE_AFTER.as_secs());
    for schema in schemas {
        let created = schema
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| secs < cutoff) {
            // Another test may be dropping it too; either way it goes.
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut *connection)
                .await;
        }
    }
}

#[async_trait]
impl StoreFactory for PostgresFactory {
    type Store = PostgresEventStore;
    type Database = PostgresDatabase;

    async fn create(&self) -> Result<PostgresDatabase> {
        let schema = format!(
            "{SCHEMA_PREFIX}{}_{}",
            now_secs(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut connection = PgConnection::connect(&self.url)
            .await
            .map_err(Error::unavailable)?;
        drop_stale_schemas(&mut connection).await;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut connection)
            .await
            .map_err(Error::unavailable)?;
        connection.close().await.map_err(Error::unavailable)?;
        Ok(PostgresDatabase { schema })
    }

    async fn open(&self, database: &PostgresDatabase) -> Result<PostgresEventStore> {
        PostgresEventStore::open_with(self.options(&database.schema)).await
    }

    fn locator(&self, database: &PostgresDatabase) -> String {
        database.schema.clone()
    }

    fn attach(&self, locator: &str) -> PostgresDatabase {
        PostgresDatabase {
            schema: locator.to_owned(),
        }
    }

    async fn hold_append(
        &self,
        store: &PostgresEventStore,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Option<HeldAppend>> {
        store.hold_append(stream, events).await.map(Some)
    }
}

mod conformance {
    // `return` leaves the generated test early when no server is configured.
    repit_event_store::conformance_tests!(match super::PostgresFactory::from_env() {
        Some(factory) => factory,
        None => return,
    });
}

const LIMIT: Duration = Duration::from_secs(60);

fn name(s: &str) -> StreamName {
    StreamName::parse(s).expect("valid stream name")
}

fn event(n: u64) -> NewEvent {
    NewEvent::json("test.Numbered", format!(r#"{{"n":{n}}}"#))
}

async fn fresh(factory: &PostgresFactory) -> (PostgresDatabase, PostgresEventStore) {
    let database = factory.create().await.expect("create a schema");
    let store = factory.open(&database).await.expect("open");
    (database, store)
}

async fn read_all(store: &PostgresEventStore, options: ReadAllOptions) -> Vec<u64> {
    let events: Vec<_> = store
        .read_all(options)
        .try_collect()
        .await
        .expect("read $all");
    events.iter().map(|e| e.position.commit()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_foreign_transaction_delays_all_readers_but_never_lets_them_skip() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let (_db, store) = fresh(&factory).await;
        store
            .append(&name("before"), ExpectedRevision::NoStream, vec![event(0)])
            .await
            .expect("append");
        // Any transaction that has taken an id holds the horizon, wherever it runs.
        let mut blocker = PgConnection::connect(&factory.url).await.expect("connect");
        sqlx::query("BEGIN")
            .execute(&mut blocker)
            .await
            .expect("begin");
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut blocker)
            .await
            .expect("take a transaction id");
        let mut subscription = store.subscribe_to_all(SubscribeToAllOptions::from_start());
        let first = subscription.next().await.expect("item").expect("ok");
        assert!(matches!(first, SubscriptionItem::Event(_)));
        let after = store
            .append(&name("after"), ExpectedRevision::NoStream, vec![event(1)])
            .await
            .expect("an append does not wait for the horizon");
        // A read that started after the append waits for the blocker instead of returning
        // without it.
        let waiting = tokio::time::timeout(
            Duration::from_millis(300),
            read_all(&store, ReadAllOptions::forwards()),
        )
        .await;
        assert!(
            waiting.is_err(),
            "a read of $all passed an open transaction"
        );
        // Caught up, possibly: the blocker had not written when the subscription started.
        // But the later event stays behind the blocker.
        loop {
            match tokio::time::timeout(Duration::from_millis(300), subscription.next()).await {
                Err(_) => break,
                Ok(Some(Ok(SubscriptionItem::CaughtUp))) => {}
                other => panic!("a subscription delivered past an open transaction: {other:?}"),
            }
        }
        sqlx::query("ROLLBACK")
            .execute(&mut blocker)
            .await
            .expect("rollback");
        // No commit announces a rollback: the subscription notices by polling.
        match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(Ok(SubscriptionItem::Event(e)))) => assert_eq!(e.position, after.position),
            other => panic!("expected the later event, got {other:?}"),
        }
        assert_eq!(read_all(&store, ReadAllOptions::forwards()).await.len(), 2);
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_share_commits_and_lose_nothing() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let (_db, store) = fresh(&factory).await;
        let tasks: Vec<_> = (0..64)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let s = name(&format!("writer-{writer}"));
                    let mut expected = ExpectedRevision::NoStream;
                    for n in 0..20 {
                        let result = store
                            .append(&s, expected, vec![event(n)])
                            .await
                            .expect("append");
                        expected = ExpectedRevision::Exact(result.next_expected_revision);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer panicked");
        }
        let events: Vec<_> = store
            .read_all(ReadAllOptions::forwards())
            .try_collect()
            .await
            .expect("read $all");
        assert_eq!(events.len(), 64 * 20);
        let transactions: std::collections::BTreeSet<u64> =
            events.iter().map(|e| e.position.commit()).collect();
        assert!(
            transactions.len() < events.len(),
            "every append had a transaction of its own"
        );
        for pair in events.windows(2) {
            assert!(pair[0].position < pair[1].position);
        }
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_woken_by_a_commit_of_another_store_on_the_same_schema() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let database = factory.create().await.expect("create a schema");
        // A poll interval longer than the test: only the notification can deliver in time.
        let mut options = factory.options(&database.schema);
        options.poll_interval = Duration::from_secs(600);
        let reader = PostgresEventStore::open_with(options.clone())
            .await
            .expect("open");
        let writer = PostgresEventStore::open_with(options).await.expect("open");
        let mut by_all = reader.subscribe_to_all(SubscribeToAllOptions::from_start());
        let mut by_stream = reader.subscribe_to_stream(&name("s-1"), SubscribeFrom::Start);
        assert_eq!(
            by_all.next().await.expect("item").expect("ok"),
            SubscriptionItem::CaughtUp
        );
        assert_eq!(
            by_stream.next().await.expect("item").expect("ok"),
            SubscriptionItem::CaughtUp
        );
        let appended = writer
            .append(&name("s-1"), ExpectedRevision::NoStream, vec![event(0)])
            .await
            .expect("append");
        for subscription in [&mut by_all, &mut by_stream] {
            match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
                Ok(Some(Ok(SubscriptionItem::Event(e)))) => {
                    assert_eq!(e.position, appended.position);
                }
                other => panic!("expected the other store's event, got {other:?}"),
            }
        }
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_writing_one_stream_decide_on_what_the_database_holds() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        // Two stores stand in for two processes: each writer keeps the rows it wrote, which
        // the other one makes stale.
        let database = factory.create().await.expect("create a schema");
        let a = factory.open(&database).await.expect("open");
        let b = factory.open(&database).await.expect("open");
        let s = name("shared");
        let revision =
            |r: Result<repit_event_store::AppendResult>| r.expect("append").next_expected_revision;
        assert_eq!(
            revision(
                a.append(&s, ExpectedRevision::NoStream, vec![event(0)])
                    .await
            ),
            0
        );
        assert_eq!(
            revision(
                b.append(&s, ExpectedRevision::Exact(0), vec![event(1)])
                    .await
            ),
            1
        );
        // `a` still holds revision 0 for the stream: its write must not land at revision 1.
        assert_eq!(
            revision(a.append(&s, ExpectedRevision::Any, vec![event(2)]).await),
            2
        );
        // Nor may a refusal rest on the stale row.
        assert_eq!(
            revision(
                b.append(&s, ExpectedRevision::Exact(2), vec![event(3)])
                    .await
            ),
            3
        );
        match a
            .append(&s, ExpectedRevision::Exact(2), vec![event(4)])
            .await
        {
            Err(Error::WrongExpectedVersion {
                actual: repit_event_store::CurrentRevision::Current(3),
                ..
            }) => {}
            other => panic!("expected a conflict at revision 3, got {other:?}"),
        }
        // Both at once, many times: every append lands, none twice.
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|store| {
                let s = s.clone();
                tokio::spawn(async move {
                    for n in 0..40 {
                        store
                            .append(&s, ExpectedRevision::Any, vec![event(n)])
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer panicked");
        }
        let events: Vec<_> = a
            .read_stream(&s, repit_event_store::ReadStreamOptions::forwards())
            .try_collect()
            .await
            .expect("read");
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (0..84).collect::<Vec<_>>()
        );
        b.tombstone_stream(&s, ExpectedRevision::Any)
            .await
            .expect("tombstone");
        assert!(matches!(
            a.append(&s, ExpectedRevision::Any, vec![event(9)]).await,
            Err(Error::StreamDeleted { .. })
        ));
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_in_different_schemas_do_not_see_each_other() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let (_a_db, a) = fresh(&factory).await;
        let (_b_db, b) = fresh(&factory).await;
        a.append(&name("same"), ExpectedRevision::NoStream, vec![event(0)])
            .await
            .expect("append");
        b.append(&name("same"), ExpectedRevision::NoStream, vec![event(1)])
            .await
            .expect("the same stream name is free in another schema");
        let filter = AllFilter::default().stream_prefix("same");
        for store in [&a, &b] {
            let events: Vec<_> = store
                .read_all(ReadAllOptions::forwards().filter(filter.clone()))
                .try_collect()
                .await
                .expect("read $all");
            assert_eq!(events.len(), 1);
        }
    })
    .await
    .expect("time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_end_with_an_error_once_the_store_is_dropped() {
    let Some(factory) = PostgresFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let (_db, store) = fresh(&factory).await;
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
async fn a_schema_name_that_would_need_quoting_is_refused_before_connecting() {
    // No server needed: the name is checked first.
    let options = PostgresOptions::from_url("postgres://nobody@127.0.0.1:1/none", "Bad-Name")
        .expect("a valid url");
    assert!(matches!(
        PostgresEventStore::open_with(options).await,
        Err(Error::Unavailable(_))
    ));
}
