//! Event-store benchmarks: prints figures and writes them to BENCHMARKS.md.
//!
//! ```sh
//! cargo bench -p repit-event-store --bench event_store                 # every backend available
//! cargo bench -p repit-event-store --bench event_store -- --quick      # smaller counts, a smoke run
//! ```
//!
//! Backends: SQLite always (a file in a temporary directory, full durability); PostgreSQL when
//! `REPIT_TEST_POSTGRES_URL` is set (a fresh schema, dropped afterwards); KurrentDB when
//! `REPIT_KURRENTDB_URL` is set. For PostgreSQL the raw commit rate of the same server is
//! measured in the same run (single-row INSERT + COMMIT loops, 1 and 64 connections) so the
//! event-store figures can be read against what the server can do at all.
//!
//! Measured per backend:
//! - sequential appends of one event to one stream: events/s, p50, p99 append latency;
//! - 64 concurrent writers on 64 streams, one event per append: events/s;
//! - catch-up read of 100k events from `$all`: events/s;
//! - subscription delivery lag at a steady 1k events/s: p50, p99 (append start → delivered).
//!
//! Everything targets the local machine only, is bounded in count and time, and stops by itself.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use repit_event_store::{
    EventStore, ExpectedRevision, NewEvent, ReadAllOptions, SqliteEventStore, StreamName,
    SubscribeToAllOptions, SubscriptionItem,
};

/// How many of each operation a run does.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    sequential_appends: usize,
    concurrent_writers: usize,
    concurrent_duration: Duration,
    catch_up_events: usize,
    lag_rate_per_second: u32,
    lag_duration: Duration,
    raw_commit_duration: Duration,
}

impl Sizes {
    fn full() -> Self {
        Self {
            sequential_appends: 5_000,
            concurrent_writers: 64,
            concurrent_duration: Duration::from_secs(10),
            catch_up_events: 100_000,
            lag_rate_per_second: 1_000,
            lag_duration: Duration::from_secs(10),
            raw_commit_duration: Duration::from_secs(5),
        }
    }

    fn quick() -> Self {
        Self {
            sequential_appends: 500,
            concurrent_writers: 64,
            concurrent_duration: Duration::from_secs(2),
            catch_up_events: 10_000,
            lag_rate_per_second: 1_000,
            lag_duration: Duration::from_secs(2),
            raw_commit_duration: Duration::from_secs(1),
        }
    }
}

/// One backend's figures.
#[derive(Debug, Default)]
struct Figures {
    backend: String,
    sequential_events_per_second: f64,
    sequential_p50: Duration,
    sequential_p99: Duration,
    concurrent_events_per_second: f64,
    catch_up_events_per_second: f64,
    lag_p50: Duration,
    lag_p99: Duration,
    lag_delivered: usize,
    lag_sent: usize,
}

/// A ~200-byte JSON payload, like a typical domain event.
fn payload(i: usize) -> Vec<u8> {
    format!(
        r#"{{"lesson_id":"0190f5c2-0000-7000-8000-{i:012}","tutor_id":"0190f5c2-0000-7000-8000-000000000001","start":"2026-11-26T10:00:00Z","duration_minutes":60,"topic":"quadratic equations"}}"#
    )
    .into_bytes()
}

fn stream(prefix: &str, i: usize) -> StreamName {
    StreamName::parse(format!("{prefix}-{i}")).expect("valid stream name")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_id() -> String {
    format!("bench{}", std::process::id())
}

async fn sequential(store: &Arc<dyn EventStore>, sizes: Sizes, figures: &mut Figures) {
    let stream = stream(&format!("{}seq", run_id()), 0);
    let mut latencies = Vec::with_capacity(sizes.sequential_appends);
    let started = Instant::now();
    for i in 0..sizes.sequential_appends {
        let began = Instant::now();
        store
            .append(
                &stream,
                ExpectedRevision::Any,
                vec![NewEvent::json("BenchEvent", payload(i))],
            )
            .await
            .expect("sequential append");
        latencies.push(began.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    figures.sequential_events_per_second = sizes.sequential_appends as f64 / elapsed.as_secs_f64();
    figures.sequential_p50 = percentile(&latencies, 50.0);
    figures.sequential_p99 = percentile(&latencies, 99.0);
}

async fn concurrent(store: &Arc<dyn EventStore>, sizes: Sizes, figures: &mut Figures) {
    let prefix = format!("{}con", run_id());
    let deadline = Instant::now() + sizes.concurrent_duration;
    let started = Instant::now();
    let writers: Vec<_> = (0..sizes.concurrent_writers)
        .map(|w| {
            let store = Arc::clone(store);
            let stream = stream(&prefix, w);
            tokio::spawn(async move {
                let mut written = 0usize;
                while Instant::now() < deadline {
                    store
                        .append(
                            &stream,
                            ExpectedRevision::Any,
                            vec![NewEvent::json("BenchEvent", payload(written))],
                        )
                        .await
                        .expect("concurrent append");
                    written += 1;
                }
                written
            })
        })
        .collect();
    let mut total = 0usize;
    for writer in writers {
        total += writer.await.expect("writer task");
    }
    figures.concurrent_events_per_second = total as f64 / started.elapsed().as_secs_f64();
}

async fn catch_up(store: &Arc<dyn EventStore>, sizes: Sizes, figures: &mut Figures) {
    // Fill `$all` up to the wanted size with batched appends (not measured), then read it all.
    let existing = store
        .read_all(ReadAllOptions::forwards().limit(sizes.catch_up_events as u64))
        .count()
        .await;
    let missing = sizes.catch_up_events.saturating_sub(existing);
    let prefix = format!("{}fill", run_id());
    let batch = 100;
    let mut filled = 0;
    let mut stream_index = 0;
    while filled < missing {
        let events: Vec<NewEvent> = (0..batch.min(missing - filled))
            .map(|i| NewEvent::json("BenchEvent", payload(filled + i)))
            .collect();
        filled += events.len();
        store
            .append(
                &stream(&prefix, stream_index % 1_000),
                ExpectedRevision::Any,
                events,
            )
            .await
            .expect("fill append");
        stream_index += 1;
    }

    let started = Instant::now();
    let mut events = store.read_all(ReadAllOptions::forwards().limit(sizes.catch_up_events as u64));
    let mut read = 0usize;
    while let Some(event) = events.next().await {
        event.expect("catch-up read");
        read += 1;
    }
    figures.catch_up_events_per_second = read as f64 / started.elapsed().as_secs_f64();
}

async fn subscription_lag(store: &Arc<dyn EventStore>, sizes: Sizes, figures: &mut Figures) {
    let prefix = format!("{}lag", run_id());
    let epoch = Instant::now();
    let mut subscription = store.subscribe_to_all(SubscribeToAllOptions::from_end());
    // Wait until the subscription is live, so history does not count as lag.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next()).await {
            Ok(Some(Ok(SubscriptionItem::CaughtUp))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("subscription did not catch up: {other:?}"),
        }
    }

    let total = (sizes.lag_rate_per_second as u64 * sizes.lag_duration.as_secs()) as usize;
    let interval = Duration::from_secs(1) / sizes.lag_rate_per_second;
    let writer_store = Arc::clone(store);
    let writer_prefix = prefix.clone();
    let writer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total {
            ticker.tick().await;
            // The event carries the instant its append began, in nanoseconds since `epoch`.
            let sent = epoch.elapsed().as_nanos() as u64;
            let store = Arc::clone(&writer_store);
            let stream = stream(&writer_prefix, i % 16);
            // Appends run concurrently so a slow commit does not hold back the steady rate.
            tokio::spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedRevision::Any,
                        vec![NewEvent::json("BenchLag", sent.to_string().into_bytes())],
                    )
                    .await
                    .expect("lag append");
            });
        }
    });

    let mut lags = Vec::with_capacity(total);
    let deadline = Instant::now() + sizes.lag_duration + Duration::from_secs(30);
    while lags.len() < total && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(Ok(SubscriptionItem::Event(event)))) => {
                if !event.stream.as_str().starts_with(&prefix) {
                    continue;
                }
                let sent: u64 = std::str::from_utf8(&event.data)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("lag payload");
                let now = epoch.elapsed().as_nanos() as u64;
                lags.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    writer.await.expect("lag writer");
    lags.sort();
    figures.lag_sent = total;
    figures.lag_delivered = lags.len();
    figures.lag_p50 = percentile(&lags, 50.0);
    figures.lag_p99 = percentile(&lags, 99.0);
}

async fn measure(backend: &str, store: Arc<dyn EventStore>, sizes: Sizes) -> Figures {
    let mut figures = Figures {
        backend: backend.to_owned(),
        ..Figures::default()
    };
    eprintln!("[{backend}] sequential appends…");
    sequential(&store, sizes, &mut figures).await;
    eprintln!(
        "[{backend}] {} concurrent writers…",
        sizes.concurrent_writers
    );
    concurrent(&store, sizes, &mut figures).await;
    eprintln!(
        "[{backend}] catch-up read of {} events…",
        sizes.catch_up_events
    );
    catch_up(&store, sizes, &mut figures).await;
    eprintln!(
        "[{backend}] subscription lag at {}/s…",
        sizes.lag_rate_per_second
    );
    subscription_lag(&store, sizes, &mut figures).await;
    figures
}

/// Raw PostgreSQL commit rate: single-row INSERT + COMMIT loops, with 1 and with 64 connections.
async fn raw_postgres_commits(url: &str, duration: Duration) -> (f64, f64) {
    use sqlx::postgres::PgPoolOptions;
    let pool = PgPoolOptions::new()
        .max_connections(64)
        .connect(url)
        .await
        .expect("connect");
    let table = format!("repit_bench_commit_{}", std::process::id());
    sqlx::query(&format!(
        "create table {table} (id bigserial primary key, body bytea not null)"
    ))
    .execute(&pool)
    .await
    .expect("create scratch table");
    let mut rates = [0.0; 2];
    for (slot, connections) in [(0, 1usize), (1, 64usize)] {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let pool = pool.clone();
                let insert = format!("insert into {table} (body) values ($1)");
                tokio::spawn(async move {
                    let mut commits = 0usize;
                    let body = payload(0);
                    while Instant::now() < deadline {
                        // Autocommit: one INSERT is one transaction and one commit.
                        sqlx::query(&insert)
                            .bind(&body)
                            .execute(&pool)
                            .await
                            .expect("raw insert");
                        commits += 1;
                    }
                    commits
                })
            })
            .collect();
        let mut commits = 0;
        for task in tasks {
            commits += task.await.expect("raw commit task");
        }
        rates[slot] = commits as f64 / started.elapsed().as_secs_f64();
    }
    sqlx::query(&format!("drop table {table}"))
        .execute(&pool)
        .await
        .expect("drop scratch table");
    (rates[0], rates[1])
}

/// A PostgreSQL store in a schema of its own, so the run never touches other data.
async fn postgres_store(url: &str) -> Arc<dyn EventStore> {
    let schema = format!("repit_bench_{}", std::process::id());
    let store = repit_event_store::PostgresEventStore::open(url, &schema)
        .await
        .expect("open the PostgreSQL event store");
    Arc::new(store)
}

async fn kurrentdb_store(url: &str) -> Arc<dyn EventStore> {
    let store = repit_event_store::kurrentdb::KurrentDbEventStore::connect(url)
        .await
        .expect("connect to KurrentDB");
    Arc::new(store)
}

/// Drops the benchmark's PostgreSQL schema.
async fn drop_postgres_schema(url: &str) {
    let schema = format!("repit_bench_{}", std::process::id());
    if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
    {
        let _ = sqlx::query(&format!("drop schema if exists {schema} cascade"))
            .execute(&pool)
            .await;
    }
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1_000.0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

fn report(all: &[Figures], raw: Option<(f64, f64)>, sizes: Sizes, quick: bool) -> String {
    let mut out = String::new();
    let command = if quick {
        "cargo bench -p repit-event-store --bench event_store -- --quick"
    } else {
        "cargo bench -p repit-event-store --bench event_store"
    };
    let _ = writeln!(out, "## Event store\n");
    let _ = writeln!(
        out,
        "Measured {} on {} with `{command}`{}.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        if all.iter().any(|f| f.backend == "postgres") {
            " (PostgreSQL from REPIT_TEST_POSTGRES_URL, as `scripts/test` sets it up)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| backend | sequential appends, 1 stream | append p50 / p99 | {} writers × {} streams | catch-up read of {}k from `$all` | subscription lag p50 / p99 at {}/s (delivered) |",
        sizes.concurrent_writers,
        sizes.concurrent_writers,
        sizes.catch_up_events / 1_000,
        sizes.lag_rate_per_second
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for f in all {
        let _ = writeln!(
            out,
            "| {} | {:.0} events/s | {} / {} | {:.0} events/s | {:.0} events/s | {} / {} ({}/{}) |",
            f.backend,
            f.sequential_events_per_second,
            millis(f.sequential_p50),
            millis(f.sequential_p99),
            f.concurrent_events_per_second,
            f.catch_up_events_per_second,
            millis(f.lag_p50),
            millis(f.lag_p99),
            f.lag_delivered,
            f.lag_sent,
        );
    }
    if let Some((single, many)) = raw {
        let _ = writeln!(
            out,
            "\nRaw PostgreSQL commit rate on the same server in the same run (single-row INSERT, \
             autocommit): {single:.0} commits/s on 1 connection, {many:.0} commits/s on 64."
        );
    }
    let _ = writeln!(
        out,
        "\nAnchors: EventStoreDB is quoted at about 33k writes/s with 10 clients and 70–125k \
         events/s reads on 4 cores. Targets on this 2-core machine: ≥ 30k events/s across 64 \
         streams on PostgreSQL, ≥ 150k events/s catch-up, subscription lag p99 ≤ 20 ms.\n\n\
         Each append carries one ~200-byte JSON event (the concurrent figure counts events, one \
         per append, so it is also the append rate). Lag is measured from the start of an append \
         to delivery by a live `$all` subscription, with appends issued at a steady rate."
    );
    out
}

/// Replaces the section between the event-store markers in BENCHMARKS.md (or appends it).
fn write_benchmarks_md(section: &str) -> std::io::Result<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let begin = "<!-- event-store:begin -->";
    let end = "<!-- event-store:end -->";
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEvery figure here comes from a run of the command printed beside it.\n"
            .to_owned()
    });
    let block = format!("{begin}\n{section}{end}");
    let updated = match (current.find(begin), current.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &current[..b], &current[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", current.trim_end()),
    };
    std::fs::write(&path, updated)?;
    Ok(path)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick { Sizes::quick() } else { Sizes::full() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut all = Vec::new();
        let mut raw = None;

        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = SqliteEventStore::open(dir.path().join("events.db"))
            .await
            .expect("open sqlite");
        all.push(measure("sqlite", Arc::new(sqlite), sizes).await);

        if let Ok(url) = std::env::var("REPIT_TEST_POSTGRES_URL") {
            raw = Some(raw_postgres_commits(&url, sizes.raw_commit_duration).await);
            let store = postgres_store(&url).await;
            all.push(measure("postgres", store, sizes).await);
            drop_postgres_schema(&url).await;
        } else {
            eprintln!("REPIT_TEST_POSTGRES_URL is not set: PostgreSQL is not measured");
        }
        if let Ok(url) = std::env::var("REPIT_KURRENTDB_URL") {
            let store = kurrentdb_store(&url).await;
            all.push(measure("kurrentdb", store, sizes).await);
        }

        let section = report(&all, raw, sizes, quick);
        println!("{section}");
        match write_benchmarks_md(&section) {
            Ok(path) => eprintln!("written to {}", path.display()),
            Err(e) => eprintln!("could not write BENCHMARKS.md: {e}"),
        }
    });
}
