//! The projection runtime against a real event store (SQLite, through the store feed) and both
//! read-model engines: SQLite always, PostgreSQL when `REPIT_TEST_POSTGRES_URL` is set (each test
//! in a database of its own, created for it and dropped afterwards).
//!
//! The projection under test is [`Counter`]: it counts the events of each stream in a table
//! `counts(stream, n)` by reading the row and writing it back (the read-modify-write most read
//! models do), parks events whose type contains `Poison` while its switch says so, and breaks a
//! NOT NULL constraint on events whose type contains `Violation` after counting them (a poison
//! event that fails in the database, whose earlier write must not survive). Every property is
//! checked by comparing `counts` with what was appended, so an event applied twice or lost shows
//! up as a wrong count.
//!
//! The runtime takes its time only where a test waits for it: conditions are polled until a
//! deadline, and each test runs within a time limit per engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use repit_event_store::{
    EventId, EventStore, ExpectedRevision, NewEvent, Position, RecordedEvent, SqliteEventStore,
    StreamName,
};
use repit_projections::{
    ApplyError, Dialect, FeedSource, Projection, ProjectionTx, ReadModelDb, Runtime,
    RuntimeOptions, TableDef, admin,
};
use sqlx::{Connection, Row};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest one test may take on one engine.
const TEST_LIMIT: Duration = Duration::from_secs(90);
/// The longest a condition may take to come true.
const WAIT: Duration = Duration::from_secs(20);

const NAME: &str = "counter";
const TICK: &str = "test.count.v1.Ticked";
const POISON: &str = "test.count.v1.Poison";
const VIOLATION: &str = "test.count.v1.Violation";
/// An event the projection does not subscribe to.
const NOISE: &str = "test.other.v1.Noise";

static TABLES: &[TableDef] = &[TableDef {
    name: "counts",
    ddl: &["CREATE TABLE {table} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)"],
}];

/// Counts events per stream; see the module docs.
#[derive(Debug)]
struct Counter {
    schema_version: i64,
    /// While set, `Poison` and `Violation` events fail; clearing it is the "fix".
    poisoning: Arc<AtomicBool>,
}

impl Counter {
    fn new() -> Arc<Self> {
        Self::version(1)
    }

    fn version(schema_version: i64) -> Arc<Self> {
        Arc::new(Self {
            schema_version,
            poisoning: Arc::new(AtomicBool::new(true)),
        })
    }
}

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema_version(&self) -> i64 {
        self.schema_version
    }

    fn event_types(&self) -> Vec<String> {
        vec!["test.count.".to_owned()]
    }

    fn tables(&self) -> &'static [TableDef] {
        TABLES
    }

    async fn apply(&self, tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let table = tx.table("counts").to_owned();
        let stream = event.stream.as_str().to_owned();
        let poisoning = self.poisoning.load(Ordering::SeqCst);
        if poisoning && event.event_type.contains("Poison") {
            return Err(ApplyError::Poison(format!(
                "poisoned on purpose: {}",
                event.event_type
            )));
        }
        let current: Option<i64> =
            sqlx::query_scalar(&format!("SELECT n FROM {table} WHERE stream = $1"))
                .bind(stream.clone())
                .fetch_optional(tx.conn())
                .await?;
        let statement = match current {
            Some(_) => format!("UPDATE {table} SET n = $2 WHERE stream = $1"),
            None => format!("INSERT INTO {table} (stream, n) VALUES ($1, $2)"),
        };
        sqlx::query(&statement)
            .bind(stream.clone())
            .bind(current.unwrap_or(0) + 1)
            .execute(tx.conn())
            .await?;
        if poisoning && event.event_type.contains("Violation") {
            // After a write of its own, which must not survive the failure.
            sqlx::query(&format!(
                "INSERT INTO {table} (stream, n) VALUES ($1, NULL)"
            ))
            .bind(format!("{stream}-violated"))
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }
}

/// One test's world on one engine: an event store and the URL of an empty read-model database.
struct Env {
    engine: &'static str,
    _dir: TempDir,
    store: Arc<SqliteEventStore>,
    url: String,
    /// What `counts` must show: the `test.count.` events appended per stream (tests take out
    /// those they expect to be parked).
    expected: BTreeMap<String, i64>,
    /// Events the projection should have applied, and the position of the last one.
    applied: u64,
    last: Option<Position>,
}

impl Env {
    async fn db(&self) -> ReadModelDb {
        ReadModelDb::connect(&self.url)
            .await
            .expect("connect to the read-model database")
    }

    fn source(&self) -> FeedSource {
        FeedSource::Store(self.store.clone())
    }

    /// A runtime over its own pool (as a separate process would have) running `projection`.
    async fn runtime(&self, projection: Arc<Counter>) -> Runtime {
        Runtime::new(self.db().await, self.source())
            .with(projection)
            .options(RuntimeOptions {
                batch_size: 16,
                retry_pause: Duration::from_millis(50),
            })
    }

    /// Appends events of `event_type` to `stream`, in one append; returns the last position.
    async fn append(&mut self, stream: &str, event_type: &str, count: usize) -> Position {
        let events = (0..count)
            .map(|i| NewEvent::json(event_type, format!(r#"{{"i":{i}}}"#)))
            .collect();
        let result = self
            .store
            .append(
                &StreamName::parse(stream).expect("valid stream name"),
                ExpectedRevision::Any,
                events,
            )
            .await
            .expect("append");
        if event_type.starts_with("test.count.") {
            *self.expected.entry(stream.to_owned()).or_default() += count as i64;
            self.applied += count as u64;
            self.last = Some(result.position);
        }
        result.position
    }

    /// Ticks `stream` once.
    async fn tick(&mut self, stream: &str) -> Position {
        self.append(stream, TICK, 1).await
    }
}

/// Runs `body` on SQLite, then on PostgreSQL when it is configured, each within [`TEST_LIMIT`].
async fn each_engine<F, Fut>(body: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("rm.db").display());
    run_on("sqlite", dir, url, &body).await;

    let Some(server) = repit_tests::require(repit_tests::Backend::Postgres) else {
        return;
    };
    let database = format!("repit_rt_{}", EventId::new().as_uuid().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to the PostgreSQL server");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let dir = tempfile::tempdir().expect("temporary directory");
    run_on("postgres", dir, database_url(&server, &database), &body).await;
    // Only reached when the test passed: a failed one leaves its database to look at.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
}

async fn run_on<F, Fut>(engine: &'static str, dir: TempDir, url: String, body: &F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = SqliteEventStore::open(&dir.path().join("events.db"))
        .await
        .expect("open the event store");
    let env = Env {
        engine,
        _dir: dir,
        store: Arc::new(store),
        url,
        expected: BTreeMap::new(),
        applied: 0,
        last: None,
    };
    eprintln!("read models on {engine}");
    tokio::time::timeout(TEST_LIMIT, body(env))
        .await
        .unwrap_or_else(|_| panic!("the test timed out on {engine}"));
}

/// `server` with its database replaced by `database`.
fn database_url(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let host = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{host}/{database}{query}")
}

/// A runtime running in a task of its own until [`Running::stop`].
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(runtime: Runtime) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(runtime.run(shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the runtime stops when cancelled")
            .expect("the runtime task does not panic");
    }
}

/// What the view `counts` shows.
async fn counts(db: &ReadModelDb) -> BTreeMap<String, i64> {
    try_counts(db).await.expect("query the counts view")
}

/// What the view `counts` shows, or why it cannot be read (it does not exist before the runtime
/// created it).
async fn try_counts(db: &ReadModelDb) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    sqlx::query("SELECT stream, n FROM counts ORDER BY stream")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect()
}

/// Waits until `counts` shows what `env` expects, then a little longer to see that it stays so
/// (a second application would arrive late).
async fn settled(env: &Env, db: &ReadModelDb) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = try_counts(db).await;
        if now.as_ref().is_ok_and(|now| *now == env.expected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "on {}: counts are {now:?}, expected {:?}",
            env.engine,
            env.expected
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counts(db).await,
        env.expected,
        "on {}: counts moved after settling",
        env.engine
    );
}

async fn status_now(db: &ReadModelDb) -> repit_projections::ProjectionStatus {
    admin::status_of(db, NAME)
        .await
        .expect("read the status")
        .expect("the projection has a status")
}

/// Waits until `check` holds for the projection's status.
async fn status_until(
    db: &ReadModelDb,
    what: &str,
    check: impl Fn(&repit_projections::ProjectionStatus) -> bool,
) -> repit_projections::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = admin::status_of(db, NAME).await.expect("read the status")
            && check(&status)
        {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            admin::status_of(db, NAME).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live generation and schema version in `projection_active`.
async fn active(db: &ReadModelDb) -> (i64, i64) {
    let row =
        sqlx::query("SELECT generation, schema_version FROM projection_active WHERE name = $1")
            .bind(NAME)
            .fetch_one(db.pool())
            .await
            .expect("the projection has a live generation");
    (
        row.try_get(0).expect("generation"),
        row.try_get(1).expect("schema version"),
    )
}

async fn table_exists(db: &ReadModelDb, table: &str) -> bool {
    let query = match db.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let n: i64 = sqlx::query_scalar(query)
        .bind(table.to_owned())
        .fetch_one(db.pool())
        .await
        .expect("look the table up");
    n > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_before_and_after_start_are_applied_exactly_once() {
    each_engine(|mut env| async move {
        for i in 0..5 {
            env.tick(&format!("s-{}", i % 2)).await;
            env.append("noise-1", NOISE, 1).await;
        }
        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime);
        settled(&env, &db).await;

        for i in 0..7 {
            env.append("noise-1", NOISE, 2).await;
            env.tick(&format!("s-{}", i % 3)).await;
        }
        env.append("s-burst", TICK, 5).await;
        settled(&env, &db).await;

        let status = status_now(&db).await;
        assert_eq!(status.generation, 1);
        assert_eq!(
            status.checkpoint, env.last,
            "the checkpoint is the last event applied"
        );
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.events_parked, 0);
        let lag = status
            .lag_ms
            .expect("a lag figure once events were applied");
        assert!(
            (0.0..WAIT.as_millis() as f64).contains(&lag),
            "lag {lag} ms"
        );
        assert!(status.last_event_at.is_some());
        assert!(status.updated_at.is_some());
        assert!(admin::parked(&db, NAME).await.expect("parked").is_empty());
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_resumes_from_its_checkpoint_and_applies_nothing_twice() {
    each_engine(|mut env| async move {
        for i in 0..6 {
            env.tick(&format!("s-{}", i % 2)).await;
        }
        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime);
        settled(&env, &db).await;
        running.stop().await;

        for i in 0..6 {
            env.tick(&format!("s-{}", i % 3)).await;
            env.append("noise-1", NOISE, 1).await;
        }
        env.append("s-0", TICK, 3).await;
        let before = status_now(&db).await;
        assert_eq!(before.events_applied, 6, "nothing applied while stopped");

        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime);
        settled(&env, &db).await;
        let after = status_now(&db).await;
        assert_eq!(after.events_applied, env.applied);
        assert_eq!(after.checkpoint, env.last);

        // A third start with nothing new changes nothing.
        running.stop().await;
        let running = Running::start(env.runtime(Counter::new()).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        settled(&env, &db).await;
        assert_eq!(status_now(&db).await.events_applied, env.applied);
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_and_the_projection_moves_on_until_a_retry_applies_it() {
    each_engine(|mut env| async move {
        let counter = Counter::new();
        let runtime = env.runtime(counter.clone()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime.clone());

        env.tick("s-1").await;
        let poison = env.append("s-1", POISON, 1).await;
        env.tick("s-1").await;
        let violation = env.append("s-2", VIOLATION, 1).await;
        env.tick("s-2").await;
        // The projection skips both for now.
        let mut skipping = env.expected.clone();
        *skipping.get_mut("s-1").expect("s-1") -= 1;
        *skipping.get_mut("s-2").expect("s-2") -= 1;
        let mut full = std::mem::replace(&mut env.expected, skipping);
        settled(&env, &db).await;

        let parked = admin::parked(&db, NAME).await.expect("parked");
        assert_eq!(parked.len(), 2, "{parked:?}");
        assert_eq!(parked[0].event.position, poison);
        assert_eq!(parked[0].event.event_type, POISON);
        assert_eq!(parked[0].error, format!("poisoned on purpose: {POISON}"));
        assert_eq!(parked[0].attempts, 1);
        assert_eq!(parked[1].event.position, violation);
        assert_eq!(parked[1].event.event_type, VIOLATION);
        assert!(!parked[1].error.is_empty());
        let status = status_now(&db).await;
        assert_eq!(status.events_parked, 2);
        assert_eq!(status.events_applied, env.applied - 2);
        assert_eq!(
            status.checkpoint, env.last,
            "the checkpoint moved past the poison"
        );

        // Later events keep coming in.
        env.tick("s-1").await;
        *full.get_mut("s-1").expect("s-1") += 1;
        settled(&env, &db).await;

        // Retrying before the fix fails again and keeps the events parked.
        let report = runtime.retry(NAME, None).await.expect("retry");
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(report.failed.len(), 2, "{report:?}");
        let parked = admin::parked(&db, NAME).await.expect("parked");
        assert_eq!(
            parked.iter().map(|p| p.attempts).collect::<Vec<_>>(),
            [2, 2]
        );

        // After the fix, one retried by id, then the rest.
        counter.poisoning.store(false, Ordering::SeqCst);
        let violation_id = parked[1].event.id.to_string();
        let report = runtime
            .retry(NAME, Some(&violation_id))
            .await
            .expect("retry one");
        assert_eq!(report.applied, [violation_id]);
        assert_eq!(admin::parked(&db, NAME).await.expect("parked").len(), 1);
        let report = runtime.retry(NAME, None).await.expect("retry all");
        assert_eq!(report.applied, [parked[0].event.id.to_string()]);
        assert!(report.failed.is_empty());

        env.expected = full;
        settled(&env, &db).await;
        assert!(admin::parked(&db, NAME).await.expect("parked").is_empty());
        let status = status_now(&db).await;
        assert_eq!(status.events_parked, 0);
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(
            runtime.retry(NAME, None).await.expect("retry nothing"),
            repit_projections::RetryReport::default()
        );
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_running_swaps_in_generation_two_and_live_events_keep_landing() {
    each_engine(|mut env| async move {
        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime.clone());
        for i in 0..30 {
            env.tick(&format!("s-{}", i % 4)).await;
            if i % 5 == 0 {
                env.append("noise-1", NOISE, 3).await;
            }
        }
        env.append("s-bulk", TICK, 150).await;
        let poison = env.append("s-9", POISON, 1).await;
        env.expected.remove("s-9");
        env.applied -= 1;
        env.tick("s-0").await;
        settled(&env, &db).await;

        // Events keep arriving while the rebuild runs.
        const LIVE: i64 = 40;
        let store = env.store.clone();
        let writer = tokio::spawn(async move {
            for _ in 0..LIVE {
                store
                    .append(
                        &StreamName::parse("s-live").expect("valid stream name"),
                        ExpectedRevision::Any,
                        vec![NewEvent::json(TICK, "{}")],
                    )
                    .await
                    .expect("append");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let shutdown = CancellationToken::new();
        let report = runtime.rebuild(NAME, &shutdown).await.expect("rebuild");
        assert_eq!(report.generation, 2);
        assert_eq!(
            report.events_parked,
            1,
            "the poison is parked again: {:?} {:?}",
            admin::parked(&db, NAME).await,
            admin::status(&db).await
        );
        writer.await.expect("writer");
        env.expected.insert("s-live".to_owned(), LIVE);
        env.applied += LIVE as u64;
        settled(&env, &db).await;

        assert_eq!(active(&db).await.0, 2);
        assert!(
            !table_exists(&db, "counts_g1").await,
            "generation 1 is dropped"
        );
        assert!(table_exists(&db, "counts_g2").await);
        let parked = admin::parked(&db, NAME).await.expect("parked");
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].event.position, poison);

        // The live runner noticed the swap and goes on in generation 2.
        for i in 0..5 {
            env.tick(&format!("s-{i}")).await;
        }
        settled(&env, &db).await;
        let status = status_now(&db).await;
        assert_eq!(status.generation, 2);
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.events_parked, 1);
        assert_eq!(status.checkpoint, env.last);

        // And a second rebuild goes to generation 3.
        let report = runtime
            .rebuild(NAME, &shutdown)
            .await
            .expect("rebuild again");
        assert_eq!(report.generation, 3);
        assert_eq!(report.events_applied, env.applied);
        env.tick("s-0").await;
        settled(&env, &db).await;
        assert!(!table_exists(&db, "counts_g2").await);
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schema_version_rebuilds_the_projection_when_the_runtime_starts() {
    each_engine(|mut env| async move {
        for i in 0..10 {
            env.tick(&format!("s-{}", i % 3)).await;
        }
        let runtime = env.runtime(Counter::version(1)).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime);
        settled(&env, &db).await;
        running.stop().await;
        assert_eq!(active(&db).await, (1, 1));

        env.tick("s-0").await;
        let running = Running::start(env.runtime(Counter::version(2)).await);
        status_until(&db, "generation 2", |s| s.generation == 2).await;
        settled(&env, &db).await;
        assert_eq!(active(&db).await, (2, 2));
        assert!(!table_exists(&db, "counts_g1").await);

        env.tick("s-4").await;
        settled(&env, &db).await;
        let status = status_now(&db).await;
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.checkpoint, env.last);
        running.stop().await;

        // The same version again starts without rebuilding.
        let running = Running::start(env.runtime(Counter::version(2)).await);
        env.tick("s-4").await;
        settled(&env, &db).await;
        assert_eq!(active(&db).await, (2, 2));
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_on_one_database_apply_each_event_exactly_once() {
    each_engine(|mut env| async move {
        for i in 0..10 {
            env.tick(&format!("s-{}", i % 3)).await;
        }
        // Both start at once, as two processes would: neither has created the tables yet.
        let first = env.runtime(Counter::new()).await;
        let second = env.runtime(Counter::new()).await;
        let db = first.db().clone();
        let first = Running::start(first);
        let second = Running::start(second);
        for round in 0..12 {
            match round % 3 {
                0 => {
                    env.append(&format!("s-{round}"), TICK, 7).await;
                }
                1 => {
                    for i in 0..5 {
                        env.tick(&format!("s-{}", i % 2)).await;
                    }
                }
                _ => {
                    env.tick("s-0").await;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }
        settled(&env, &db).await;
        let status = status_now(&db).await;
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.checkpoint, env.last);
        first.stop().await;
        second.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_batch_is_applied_in_several_transactions() {
    each_engine(|mut env| async move {
        env.append("s-0", TICK, 50).await;
        env.append("noise-1", NOISE, 40).await;
        env.append("s-1", TICK, 9).await;
        env.append("s-2", POISON, 1).await;
        env.append("s-1", TICK, 21).await;
        // A poison event last, then more events than the store's checkpoint interval that the
        // projection does not want: the checkpoint still moves over them.
        env.append("s-2", POISON, 1).await;
        let end = env.append("noise-1", NOISE, 40).await;
        env.applied -= 2;
        env.expected.remove("s-2");
        let runtime = Runtime::new(env.db().await, env.source())
            .with(Counter::new())
            .options(RuntimeOptions {
                batch_size: 4,
                retry_pause: Duration::from_millis(50),
            });
        let db = runtime.db().clone();
        let running = Running::start(runtime);
        settled(&env, &db).await;
        let status = status_now(&db).await;
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.events_parked, 2);
        assert_eq!(status.checkpoint, Some(end));
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_gives_empty_views_that_rebuild_and_fill_later() {
    each_engine(|mut env| async move {
        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        runtime.prepare().await.expect("prepare");
        assert!(
            counts(&db).await.is_empty(),
            "the view exists before any event"
        );
        let running = Running::start(runtime.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = status_now(&db).await;
        assert_eq!(status.checkpoint, None);
        assert_eq!(status.events_applied, 0);
        assert_eq!(status.lag_ms, None);

        let report = runtime
            .rebuild(NAME, &CancellationToken::new())
            .await
            .expect("rebuild an empty projection");
        assert_eq!(report.generation, 2);
        assert_eq!(report.events_applied, 0);
        assert!(counts(&db).await.is_empty());

        env.tick("s-0").await;
        settled(&env, &db).await;
        assert_eq!(
            status_until(&db, "the event", |s| s.events_applied == 1)
                .await
                .generation,
            2
        );
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_parameter_used_twice_binds_the_same_value() {
    each_engine(|env| async move {
        let db = env.db().await;
        let row = sqlx::query("SELECT $1 + $1, $2, $1 * $2")
            .bind(20_i64)
            .bind(2_i64)
            .fetch_one(db.pool())
            .await
            .expect("query");
        let got: (i64, i64, i64) = (
            row.try_get(0).expect("first"),
            row.try_get(1).expect("second"),
            row.try_get(2).expect("third"),
        );
        assert_eq!(got, (40, 2, 40), "on {}", env.engine);
        // In a WHERE clause as checkpoint::advance uses it.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM projection_active WHERE $1 = $1 AND name <> $2",
        )
        .bind(1_i64)
        .bind("x".to_owned())
        .fetch_one(db.pool())
        .await
        .expect("query");
        assert_eq!(n, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_finishes_when_the_live_checkpoint_is_ahead_over_filtered_out_events() {
    // The SQLite store scans a filtered `$all` in windows of 4096 positions and reports a
    // checkpoint after 32 passed-over events. A rebuild reading from the start therefore stops
    // at checkpoint 4096 when the head is 4127, while the live runner, which saw the head at
    // 4090 and then 4127, is at 4127. Only events the projection does not want lie between.
    each_engine(|mut env| async move {
        let runtime = env.runtime(Counter::new()).await;
        let db = runtime.db().clone();
        let running = Running::start(runtime.clone());
        let first = env.tick("s-0").await.commit();
        let mut head = first;
        while head < 4090 {
            let count = (4090 - head).min(500) as usize;
            head = env.append("noise-1", NOISE, count).await.commit();
        }
        let at = |commit: u64| Some(Position::new(commit, commit));
        status_until(&db, "the checkpoint at 4090", |s| s.checkpoint == at(4090)).await;
        env.append("noise-1", NOISE, 37).await;
        status_until(&db, "the checkpoint at 4127", |s| s.checkpoint == at(4127)).await;

        let report = tokio::time::timeout(
            Duration::from_secs(10),
            runtime.rebuild(NAME, &CancellationToken::new()),
        )
        .await
        .expect("the rebuild finishes")
        .expect("rebuild");
        assert_eq!(report.generation, 2);
        settled(&env, &db).await;
        env.tick("s-1").await;
        settled(&env, &db).await;
        let status = status_now(&db).await;
        assert_eq!(status.generation, 2);
        assert_eq!(status.events_applied, env.applied);
        assert_eq!(status.checkpoint, env.last);
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_the_database_cannot_grant_is_a_transient_failure_and_a_broken_constraint_poison() {
    each_engine(|env| async move {
        let db = env.db().await;
        sqlx::query("CREATE TABLE locked (x BIGINT NOT NULL)")
            .execute(db.pool())
            .await
            .expect("create the table");
        let mut holder = db.pool().acquire().await.expect("a connection");
        let mut waiter = db.pool().acquire().await.expect("another connection");
        let (hold, impatient) = match db.dialect() {
            Dialect::Sqlite => ("BEGIN IMMEDIATE", "PRAGMA busy_timeout = 0"),
            Dialect::Postgres => ("BEGIN", "SET lock_timeout = '50ms'"),
        };
        sqlx::query(hold)
            .execute(&mut *holder)
            .await
            .expect("begin");
        if db.dialect() == Dialect::Postgres {
            sqlx::query("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *holder)
                .await
                .expect("lock the table");
        }
        sqlx::query(impatient)
            .execute(&mut *waiter)
            .await
            .expect("stop waiting for locks");
        let refused = sqlx::query("INSERT INTO locked (x) VALUES (1)")
            .execute(&mut *waiter)
            .await
            .expect_err("the table is locked");
        assert!(
            matches!(ApplyError::from(refused), ApplyError::Transient(_)),
            "on {}: a lock conflict is transient",
            env.engine
        );
        sqlx::query("ROLLBACK")
            .execute(&mut *holder)
            .await
            .expect("release the lock");
        let broken = sqlx::query("INSERT INTO locked (x) VALUES (NULL)")
            .execute(&mut *waiter)
            .await
            .expect_err("x is NOT NULL");
        assert!(
            matches!(ApplyError::from(broken), ApplyError::Poison(_)),
            "on {}: a broken constraint is poison",
            env.engine
        );
        // Back to the pool as they were.
        sqlx::query(match db.dialect() {
            Dialect::Sqlite => "PRAGMA busy_timeout = 10000",
            Dialect::Postgres => "SET lock_timeout = 0",
        })
        .execute(&mut *waiter)
        .await
        .expect("restore the lock timeout");
    })
    .await;
}
