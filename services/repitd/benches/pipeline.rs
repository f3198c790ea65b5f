//! The lesson pipeline end to end, with the real `repitd` binaries: prints figures and writes them
//! to BENCHMARKS.md (between `<!-- pipeline:begin -->` and `<!-- pipeline:end -->`).
//!
//! ```sh
//! cargo bench -p repitd --bench pipeline                  # embedded, and distributed when configured
//! cargo bench -p repitd --bench pipeline -- --quick       # smaller counts, a smoke run
//! ```
//!
//! Two modes, each started fresh on loopback:
//! - embedded: one `repitd serve` (every target) on its SQLite defaults in a private
//!   `REPIT_STORAGE__DATA_DIR`; projections read the store's own subscription;
//! - distributed (when `REPIT_TEST_POSTGRES_URL` and `REPIT_TEST_NATS_URL` are set, as
//!   `scripts/test` sets them up): three processes, `--target lesson`, `--target relay` and
//!   `--target projections`, on a fresh PostgreSQL database (event store and read models) and a
//!   JetStream stream and subject prefix of their own. The database is dropped and the stream
//!   deleted at the end.
//!
//! Measured in each mode, after 300 warm-up calls:
//! - command throughput: 3000 `ScheduleLesson` calls through gRPC, each client signed in as a
//!   tutor of its own, each call with a fresh student an hour after the one before (so no two
//!   conflict), from 16 and then 64 concurrent clients (one HTTP/2 connection each, one call in
//!   flight each): commands/s and call latency p50/p99;
//! - command-to-read-model lag at a steady 500 commands/s for 15 s (open loop: a call is issued
//!   every 2 ms whatever the earlier ones are doing; 8 connections): from the moment a call is
//!   sent until its row is visible in the
//!   `lessons` read model, observed by polling the read-model database directly about every
//!   millisecond (the SQLite file `<data_dir>/read-models.db`, or the PostgreSQL view). The calls
//!   leave `request_id` empty, so the service gives each lesson a UUIDv7 id; since the id's time
//!   part is taken after the call was sent, the poll asks only for `lesson_id >=` the UUIDv7
//!   prefix of the oldest call not yet seen, a range scan of the primary key (the `lessons`
//!   table has no index on `created_at_us`, and a full scan every millisecond would load the
//!   machine it measures; on PostgreSQL the poll's session also turns sequential scans off,
//!   because the young table has no statistics).
//!
//! To show where the time goes, also recorded:
//! - in the lag run, stages measured from the same send: the ScheduleLesson response and,
//!   distributed only, the `created` time the store gave the LessonScheduled event and the
//!   relay's message for it reaching a plain NATS subscriber on the stream's subjects;
//! - distributed only, the oldest transaction holding a transaction id in another database of
//!   the same PostgreSQL server: it would hold back the relay's `$all` horizon (ADR 6), so a
//!   lag figure taken next to one is not the product's alone;
//! - the CPU time per command of each `repitd` process, of all PostgreSQL and NATS processes
//!   (distributed) and of the bench client itself, from `/proc/<pid>/stat`, and the machine's
//!   busy share (with a one-second sample before the run, to show other work on the machine).
//!
//! Everything is bounded in count and time and stops by itself; the servers are stopped with
//! SIGTERM at the end (and killed if the program panics).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{TimeDelta, Utc};
use prost_types::Timestamp;
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_tests::identity::{self, SignedInChannel};
use repit_tests::{ChildServer, spawn_server};
use sqlx::Connection;
use tonic::transport::Channel;
use uuid::Uuid;

/// How much a run does.
#[derive(Clone, Debug)]
struct Sizes {
    warmup_commands: usize,
    throughput_commands: usize,
    concurrency: Vec<usize>,
    throughput_limit: Duration,
    lag_interval: Duration,
    lag_duration: Duration,
    lag_drain: Duration,
    poll_interval: Duration,
}

impl Sizes {
    fn full() -> Self {
        Self {
            warmup_commands: 300,
            throughput_commands: 3_000,
            concurrency: vec![16, 64],
            throughput_limit: Duration::from_secs(60),
            lag_interval: Duration::from_millis(2),
            lag_duration: Duration::from_secs(15),
            lag_drain: Duration::from_secs(20),
            poll_interval: Duration::from_millis(5),
        }
    }

    fn quick() -> Self {
        Self {
            warmup_commands: 50,
            throughput_commands: 500,
            concurrency: vec![16, 64],
            throughput_limit: Duration::from_secs(20),
            lag_interval: Duration::from_millis(2),
            lag_duration: Duration::from_secs(3),
            lag_drain: Duration::from_secs(10),
            poll_interval: Duration::from_millis(5),
        }
    }

    fn lag_rate(&self) -> f64 {
        1.0 / self.lag_interval.as_secs_f64()
    }

    fn lag_commands(&self) -> usize {
        (self.lag_duration.as_secs_f64() / self.lag_interval.as_secs_f64()).round() as usize
    }
}

fn repitd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_repitd"))
}

/// Whether the binary under test is the optimised one (`target/release/repitd`, which `cargo
/// bench` builds with the bench profile).
fn binary_is_optimised() -> bool {
    repitd()
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "release")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1_000.0)
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The smallest UUIDv7 (as text) whose timestamp is `ms`: every v7 id made at or after `ms` sorts
/// at or after it, byte-wise (lowercase hex, fixed layout).
fn uuid_v7_floor(ms: u64) -> String {
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        (ms >> 16) & 0xffff_ffff,
        ms & 0xffff
    )
}

/// A ScheduleLesson of the client's tutor with a fresh student, an hour after the call
/// before it: it never conflicts with another.
fn schedule_request(i: usize, tutor: &str) -> pb::ScheduleLessonRequest {
    let start = Utc::now() + TimeDelta::days(30) + TimeDelta::hours(i as i64);
    pb::ScheduleLessonRequest {
        // Empty: the service makes a UUIDv7 lesson id (the lag poll relies on that).
        request_id: String::new(),
        tutor_id: tutor.to_owned(),
        student_id: Uuid::new_v4().to_string(),
        start_time: Some(Timestamp {
            seconds: start.timestamp(),
            nanos: 0,
        }),
        duration: Some(prost_types::Duration {
            seconds: 3_600,
            nanos: 0,
        }),
        time_zone: "Europe/Berlin".into(),
        subject: "Mathematics".into(),
        planned_topic: "Quadratic equations".into(),
        ..Default::default()
    }
}

/// CPU time (user + system) a process has used so far and its command name, from
/// `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Option<(String, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((comm, Duration::from_millis((utime + stime) * 10)))
}

/// The shared servers' processes, whose CPU time is summed per name.
const SHARED_SERVERS: &[&str] = &["postgres", "nats-server"];

/// CPU time of every process of the shared servers, by pid.
fn shared_server_cpu() -> HashMap<String, (String, Duration)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().into_string().ok()?;
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (comm, cpu) = cpu_time(&pid)?;
            SHARED_SERVERS
                .contains(&comm.as_str())
                .then_some((pid, (comm, cpu)))
        })
        .collect()
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The machine's busy share over `period`, before anything starts (other work on the machine
/// shows here).
async fn machine_busy(period: Duration) -> Option<f64> {
    let (busy0, total0) = machine_jiffies()?;
    tokio::time::sleep(period).await;
    let (busy1, total1) = machine_jiffies()?;
    Some((busy1 - busy0) as f64 / (total1 - total0).max(1) as f64)
}

/// CPU use of the servers, the bench client and the machine over one phase.
#[derive(Debug)]
struct CpuMeter {
    processes: Vec<(String, String, Duration)>,
    shared: HashMap<String, (String, Duration)>,
    distributed: bool,
    machine: Option<(u64, u64)>,
}

impl CpuMeter {
    fn start(mode: &Mode) -> Self {
        let mut processes: Vec<(String, String, Duration)> = mode
            .servers
            .iter()
            .filter_map(|(name, server)| {
                let pid = server.pid()?.to_string();
                let (_, cpu) = cpu_time(&pid)?;
                Some((name.clone(), pid, cpu))
            })
            .collect();
        if let Some((_, cpu)) = cpu_time("self") {
            processes.push(("bench client".to_owned(), "self".to_owned(), cpu));
        }
        Self {
            processes,
            // PostgreSQL and NATS only serve the distributed mode.
            shared: if mode.name == "distributed" {
                shared_server_cpu()
            } else {
                HashMap::new()
            },
            distributed: mode.name == "distributed",
            machine: machine_jiffies(),
        }
    }

    /// "lesson 1.9 ms, relay 0.3 ms, …, postgres 1.2 ms, …" of CPU per command, and the
    /// machine's busy share.
    fn finish(&self, commands: usize) -> String {
        let per_command = |used: Duration| used.as_secs_f64() * 1_000.0 / commands.max(1) as f64;
        let mut parts: Vec<String> = self
            .processes
            .iter()
            .filter_map(|(name, pid, before)| {
                let (_, now) = cpu_time(pid)?;
                Some(format!(
                    "{name} {:.2} ms",
                    per_command(now.saturating_sub(*before))
                ))
            })
            .collect();
        let mut shared: Vec<(String, Duration)> = SHARED_SERVERS
            .iter()
            .map(|name| ((*name).to_owned(), Duration::ZERO))
            .collect();
        for (pid, (comm, now)) in shared_server_cpu() {
            let before = self.shared.get(&pid).map_or(Duration::ZERO, |(_, d)| *d);
            if let Some(slot) = shared.iter_mut().find(|(name, _)| *name == comm) {
                slot.1 += now.saturating_sub(before);
            }
        }
        if self.distributed {
            for (name, used) in shared {
                parts.push(format!("{name} {:.2} ms", per_command(used)));
            }
        }
        if let (Some((busy0, total0)), Some((busy1, total1))) = (self.machine, machine_jiffies()) {
            let busy = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
            parts.push(format!("machine {:.0}% busy", busy * 100.0));
        }
        parts.join(", ")
    }
}

/// Where a mode's read models live.
#[derive(Debug, Clone)]
enum ReadModel {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A connection to the read-model database that asks which lessons are visible.
enum Poller {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

const POLL_QUERY: &str = "SELECT lesson_id FROM lessons WHERE lesson_id >= $1";

impl Poller {
    /// Connects, and waits (bounded) until the `lessons` view exists.
    async fn connect(read_model: &ReadModel) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = match read_model {
                ReadModel::Sqlite(path) => {
                    let options = sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(path)
                        .read_only(true);
                    sqlx::SqliteConnection::connect_with(&options)
                        .await
                        .map(Self::Sqlite)
                }
                ReadModel::Postgres(url) => match sqlx::PgConnection::connect(url).await {
                    // The view's table is new and has no statistics yet, and the poll is a
                    // prepared statement: left to itself the planner scans the whole table
                    // every millisecond. This session only ever wants the primary key range.
                    Ok(mut conn) => sqlx::query("SET enable_seqscan = off")
                        .execute(&mut conn)
                        .await
                        .map(|_| Self::Postgres(conn)),
                    Err(e) => Err(e),
                },
            };
            let error = match connected {
                Ok(mut poller) => match poller.visible("ffffffff").await {
                    Ok(_) => return poller,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "the lessons read model did not appear within 30 s: {error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PostgreSQL only: how long the oldest transaction that holds a transaction id in another
    /// database of the same server has been running. Such a transaction holds back the `$all`
    /// horizon the relay reads below (ADR 6), so it shows up as lag that is not the product's.
    async fn foreign_transaction_age(&mut self) -> Option<Duration> {
        let Self::Postgres(conn) = self else {
            return None;
        };
        let seconds: f64 = sqlx::query_scalar(
            "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8
             FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()",
        )
        .fetch_one(conn)
        .await
        .ok()?;
        Some(Duration::from_secs_f64(seconds.max(0.0)))
    }

    /// When the projection wrote each lesson row at or above `floor` (`projected_at_us`, µs
    /// since the epoch): read once after a run, so it costs the measured system nothing.
    async fn written(&mut self, floor: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        const QUERY: &str = "SELECT lesson_id, projected_at_us FROM lessons WHERE lesson_id >= $1";
        match self {
            Self::Sqlite(conn) => sqlx::query_as(QUERY).bind(floor).fetch_all(conn).await,
            Self::Postgres(conn) => sqlx::query_as(QUERY).bind(floor).fetch_all(conn).await,
        }
    }

    async fn visible(&mut self, floor: &str) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Self::Sqlite(conn) => {
                sqlx::query_scalar(POLL_QUERY)
                    .bind(floor)
                    .fetch_all(conn)
                    .await
            }
            Self::Postgres(conn) => {
                sqlx::query_scalar(POLL_QUERY)
                    .bind(floor)
                    .fetch_all(conn)
                    .await
            }
        }
    }
}

/// The running servers of one mode.
struct Mode {
    name: &'static str,
    servers: Vec<(String, ChildServer)>,
    lesson_url: String,
    read_model: ReadModel,
    /// NATS URL and subject prefix (distributed).
    nats: Option<(String, String)>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Mode {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("a data directory");
        let data_dir = dir.path().to_str().expect("utf-8 temp path").to_owned();
        let server = spawn_server(
            repitd(),
            &["serve"],
            &[
                ("REPIT_STORAGE__DATA_DIR", data_dir.as_str()),
                // One client drives thousands of commands a second: the per-caller limit of
                // the in-process gateway would measure itself, not the pipeline.
                ("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false"),
            ],
        )
        .await;
        Self {
            name: "embedded",
            lesson_url: server.url(),
            servers: vec![("repitd".to_owned(), server)],
            read_model: ReadModel::Sqlite(dir.path().join("read-models.db")),
            nats: None,
            _data_dir: Some(dir),
        }
    }

    async fn distributed(resources: &DistributedResources) -> Self {
        let env: Vec<(&str, &str)> = vec![
            ("REPIT_STORAGE__EVENT_STORE_URL", &resources.database_url),
            ("REPIT_STORAGE__READ_MODEL_URL", &resources.database_url),
            ("REPIT_NATS__URL", &resources.nats_url),
            ("REPIT_NATS__STREAM", &resources.stream),
            ("REPIT_NATS__SUBJECT_PREFIX", &resources.subject_prefix),
        ];
        let mut servers = Vec::new();
        // The user service runs beside the lesson service: clients sign up there, and the lesson
        // service verifies their tokens with the keys it reads directly.
        for target in ["user,lesson", "relay", "projections"] {
            let server = spawn_server(repitd(), &["serve", "--target", target], &env).await;
            servers.push((target.to_owned(), server));
        }
        Self {
            name: "distributed",
            lesson_url: servers[0].1.url(),
            servers,
            read_model: ReadModel::Postgres(resources.database_url.clone()),
            nats: Some((resources.nats_url.clone(), resources.subject_prefix.clone())),
            _data_dir: None,
        }
    }

    /// `count` clients, each signed in as a tutor of its own (every lesson needs a signed-in
    /// tutor, who books only their own lessons), with the tutor's id.
    async fn clients(&self, count: usize) -> Vec<(LessonServiceClient<SignedInChannel>, String)> {
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Channel::from_shared(self.lesson_url.clone())
                .expect("valid url")
                .connect()
                .await
                .expect("connect to repitd");
            let tutor = identity::sign_up_tutor(channel.clone(), "Bench Tutor").await;
            clients.push((LessonServiceClient::new(tutor.on(channel)), tutor.user_id));
        }
        clients
    }

    async fn stop(self) {
        for (name, server) in self.servers {
            let (exit, _) = server.terminate().await;
            if !exit.success() {
                eprintln!("[{}] {name} exited with {exit}", self.name);
            }
        }
    }
}

/// The PostgreSQL database and JetStream names one distributed run owns.
#[derive(Debug, Clone)]
struct DistributedResources {
    postgres_base: String,
    database: String,
    database_url: String,
    nats_url: String,
    stream: String,
    subject_prefix: String,
}

impl DistributedResources {
    async fn create(postgres_base: String, nats_url: String) -> Self {
        let unique = Uuid::now_v7().simple().to_string();
        let database = format!("repit_bench_{unique}");
        let mut conn = sqlx::PgConnection::connect(&postgres_base)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut conn)
            .await
            .expect("create the benchmark database");
        let (prefix, _) = postgres_base.rsplit_once('/').expect("database url");
        Self {
            database_url: format!("{prefix}/{database}"),
            postgres_base,
            database,
            nats_url,
            stream: format!("BENCH_{unique}"),
            subject_prefix: format!("bench.{unique}"),
        }
    }

    /// Drops the database and deletes the stream (after the servers stopped).
    async fn remove(&self) {
        match sqlx::PgConnection::connect(&self.postgres_base).await {
            Ok(mut conn) => {
                if let Err(e) = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                ))
                .execute(&mut conn)
                .await
                {
                    eprintln!("could not drop database {}: {e}", self.database);
                }
            }
            Err(e) => eprintln!("could not connect to drop {}: {e}", self.database),
        }
        match async_nats::connect(self.nats_url.as_str()).await {
            Ok(client) => {
                let jetstream = async_nats::jetstream::new(client);
                if let Err(e) = jetstream.delete_stream(&self.stream).await {
                    eprintln!("could not delete stream {}: {e}", self.stream);
                }
            }
            Err(e) => eprintln!("could not connect to NATS to delete {}: {e}", self.stream),
        }
    }
}

/// One closed-loop throughput run.
#[derive(Debug, Clone)]
struct Throughput {
    mode: &'static str,
    clients: usize,
    ok: usize,
    errors: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu: String,
}

/// `count` ScheduleLesson calls from `clients` concurrent clients, each with one call in flight.
async fn throughput(mode: &Mode, clients: usize, count: usize, limit: Duration) -> Throughput {
    let connected = mode.clients(clients).await;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMeter::start(mode);
    let started = Instant::now();
    let deadline = started + limit;
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|(mut client, tutor)| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() >= deadline {
                        break;
                    }
                    let request = schedule_request(i, &tutor);
                    let began = Instant::now();
                    match client.schedule_lesson(request).await {
                        Ok(_) => latencies.push(began.elapsed()),
                        Err(status) => errors.push(status),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for task in tasks {
        let (l, e) = task.await.expect("client task");
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    let cpu = cpu.finish(latencies.len() + errors.len());
    if let Some(first) = errors.first() {
        eprintln!(
            "[{}] {} errors, the first: {first:?}",
            mode.name,
            errors.len()
        );
    }
    latencies.sort();
    Throughput {
        mode: mode.name,
        clients,
        ok: latencies.len(),
        errors: errors.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        cpu,
    }
}

/// p50 and p99 of a sample (sorted here).
#[derive(Debug, Clone, Copy, Default)]
struct Spread {
    p50: Duration,
    p99: Duration,
    count: usize,
}

impl Spread {
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort();
        Self {
            p50: percentile(&sample, 50.0),
            p99: percentile(&sample, 99.0),
            count: sample.len(),
        }
    }

    fn show(&self) -> String {
        if self.count == 0 {
            "—".to_owned()
        } else {
            format!("{} / {}", millis(self.p50), millis(self.p99))
        }
    }
}

/// One open-loop lag run.
#[derive(Debug, Clone)]
struct Lag {
    mode: &'static str,
    issued: usize,
    observed: usize,
    failed: usize,
    lag: Spread,
    max: Duration,
    /// Send → the projection writing the lesson's row (`projected_at_us`), no polling involved.
    written: Spread,
    /// Send → the ScheduleLesson response.
    response: Spread,
    /// Send → the lesson event's `created` time in the store (distributed only).
    stored: Spread,
    /// Send → the relay's message for the lesson event arriving at a NATS subscriber
    /// (distributed only).
    on_nats: Spread,
    polls: usize,
    mean_poll: Duration,
    /// The oldest xid-holding transaction in another database seen (distributed only).
    foreign_transaction: Option<Duration>,
    cpu: String,
}

/// What the caller learnt about call `i`.
#[derive(Debug)]
enum Outcome {
    Scheduled { lesson_id: String },
    Failed,
}

/// When each lesson's first event reached a plain NATS subscriber on the relay's subjects, and
/// the event's `created` time (µs since the epoch) from its `Repit-Created` header.
type NatsArrivals = Arc<Mutex<HashMap<String, (Instant, i64)>>>;

/// Subscribes to the lesson service's subjects under `prefix` (core NATS sees what the relay
/// publishes to JetStream) and records each lesson's first event.
async fn tap_nats(url: &str, prefix: &str) -> (NatsArrivals, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let mut subscriber = client
        .subscribe(format!("{prefix}.lesson.>"))
        .await
        .expect("subscribe to the relay's subjects");
    client.flush().await.expect("flush the subscription");
    let arrivals: NatsArrivals = Arc::new(Mutex::new(HashMap::new()));
    let map = Arc::clone(&arrivals);
    let task = tokio::spawn(async move {
        // Keep the client alive as long as the subscription.
        let _client = client;
        while let Some(message) = subscriber.next().await {
            let now = Instant::now();
            let Some(headers) = message.headers.as_ref() else {
                continue;
            };
            let Some(lesson_id) = headers
                .get("Repit-Stream")
                .and_then(|s| s.as_str().strip_prefix("lesson-"))
            else {
                continue;
            };
            let created = headers
                .get("Repit-Created")
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c.as_str()).ok())
                .map_or(0, |c| c.timestamp_micros());
            map.lock()
                .expect("arrivals")
                .entry(lesson_id.to_owned())
                .or_insert((now, created));
        }
    });
    (arrivals, task)
}

/// Calls issued every `interval` without waiting for earlier ones; each call's row is looked for
/// in the read model by polling it directly.
async fn lag(mode: &Mode, sizes: &Sizes) -> Lag {
    let total = sizes.lag_commands();
    let clients = mode.clients(8).await;
    let mut poller = Poller::connect(&mode.read_model).await;
    let tap = match &mode.nats {
        Some((url, prefix)) => Some(tap_nats(url, prefix).await),
        None => None,
    };
    // When each call was sent: monotonic instant and wall-clock microseconds.
    let sent: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let (outcomes_tx, mut outcomes) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Outcome, Duration)>();
    let cpu = CpuMeter::start(mode);

    let sender_sent = Arc::clone(&sent);
    let interval = sizes.lag_interval;
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total {
            ticker.tick().await;
            let (client, tutor) = &clients[i % clients.len()];
            let request = schedule_request(i, tutor);
            let mut client = client.clone();
            let outcomes = outcomes_tx.clone();
            let began = Instant::now();
            sender_sent
                .lock()
                .expect("sent log")
                .push((began, wall_us()));
            tokio::spawn(async move {
                let outcome = match client.schedule_lesson(request).await {
                    Ok(response) => match response.into_inner().lesson {
                        Some(lesson) => Outcome::Scheduled {
                            lesson_id: lesson.lesson_id,
                        },
                        None => Outcome::Failed,
                    },
                    Err(status) => {
                        eprintln!("lag call {i} failed: {status:?}");
                        Outcome::Failed
                    }
                };
                let _ = outcomes.send((i, outcome, began.elapsed()));
            });
        }
    });

    // lesson id → when the poller first saw it.
    let mut seen: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut ids: Vec<Option<Outcome>> = (0..total).map(|_| None).collect();
    let mut responses = Vec::with_capacity(total);
    let mut lags = Vec::with_capacity(total);
    let mut failed = 0usize;
    let mut polls = 0usize;
    let mut polling = Duration::ZERO;
    let mut foreign_transaction: Option<Duration> = None;
    let mut oldest = 0usize; // calls before it are resolved (seen or failed)
    let deadline = Instant::now() + sizes.lag_duration + sizes.lag_drain;
    let mut ticker = tokio::time::interval(sizes.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while oldest < total && Instant::now() < deadline {
        ticker.tick().await;
        let floor = {
            let sent = sent.lock().expect("sent log");
            let us = sent.get(oldest).map_or_else(wall_us, |(_, us)| *us);
            // A little slack for clock granularity; the rows only have to be found once.
            uuid_v7_floor((us / 1_000).saturating_sub(5).max(0) as u64)
        };
        if polls.is_multiple_of(50)
            && let Some(age) = poller.foreign_transaction_age().await
        {
            foreign_transaction = foreign_transaction.max(Some(age));
        }
        let began = Instant::now();
        let result = poller.visible(&floor).await;
        let now = Instant::now();
        polls += 1;
        polling += now - began;
        match result {
            Ok(rows) => {
                for id in rows {
                    seen.entry(id).or_insert(now);
                }
            }
            Err(e) => eprintln!("[{}] poll failed: {e}", mode.name),
        }
        while let Ok((i, outcome, latency)) = outcomes.try_recv() {
            if matches!(outcome, Outcome::Failed) {
                failed += 1;
            } else {
                responses.push(latency);
            }
            ids[i] = Some(outcome);
        }
        let sent = sent.lock().expect("sent log");
        while oldest < sent.len() {
            match &ids[oldest] {
                Some(Outcome::Failed) => {}
                Some(Outcome::Scheduled { lesson_id }) => match seen.get(lesson_id) {
                    Some(at) => lags.push(at.saturating_duration_since(sent[oldest].0)),
                    None => break,
                },
                None => break,
            }
            oldest += 1;
        }
    }
    let cpu = cpu.finish(total);
    sender.abort();
    let sent = sent.lock().expect("sent log").clone();
    if oldest < total {
        eprintln!(
            "[{}] lag run stopped at its deadline: {} of {total} calls resolved",
            mode.name, oldest
        );
    }

    // Where the time went, for the calls whose row was seen.
    let mut stored = Vec::new();
    let mut on_nats = Vec::new();
    if let Some((arrivals, task)) = tap {
        task.abort();
        let arrivals = arrivals.lock().expect("arrivals");
        for (i, outcome) in ids.iter().enumerate().take(oldest) {
            let Some(Outcome::Scheduled { lesson_id }) = outcome else {
                continue;
            };
            let (Some((sent_at, sent_us)), Some((arrived, created_us))) =
                (sent.get(i), arrivals.get(lesson_id))
            else {
                continue;
            };
            on_nats.push(arrived.saturating_duration_since(*sent_at));
            if *created_us > 0 {
                let micros = u64::try_from(created_us - sent_us).unwrap_or(0);
                stored.push(Duration::from_micros(micros));
            }
        }
    }
    // Send → row written, from the rows' own `projected_at_us`.
    let mut written = Vec::new();
    let first_floor = sent
        .first()
        .map(|(_, us)| uuid_v7_floor((us / 1_000).saturating_sub(5).max(0) as u64));
    if let Some(floor) = first_floor {
        match poller.written(&floor).await {
            Ok(rows) => {
                let at: HashMap<String, i64> = rows.into_iter().collect();
                for (i, outcome) in ids.iter().enumerate() {
                    let (Some(Outcome::Scheduled { lesson_id }), Some((_, sent_us))) =
                        (outcome, sent.get(i))
                    else {
                        continue;
                    };
                    if let Some(projected) = at.get(lesson_id) {
                        let micros = u64::try_from(projected - sent_us).unwrap_or(0);
                        written.push(Duration::from_micros(micros));
                    }
                }
            }
            Err(e) => eprintln!("[{}] reading projected_at_us failed: {e}", mode.name),
        }
    }
    let max = lags.iter().max().copied().unwrap_or_default();
    Lag {
        written: Spread::of(written),
        mode: mode.name,
        issued: sent.len(),
        observed: lags.len(),
        failed,
        lag: Spread::of(lags),
        max,
        response: Spread::of(responses),
        stored: Spread::of(stored),
        on_nats: Spread::of(on_nats),
        polls,
        mean_poll: polling / u32::try_from(polls.max(1)).unwrap_or(u32::MAX),
        foreign_transaction,
        cpu,
    }
}

/// Warm-up, the throughput runs, then the lag run, on one set of servers.
async fn measure(mode: &Mode, sizes: &Sizes) -> (Vec<Throughput>, Lag) {
    eprintln!(
        "[{}] warm-up: {} commands…",
        mode.name, sizes.warmup_commands
    );
    let _ = throughput(mode, 16, sizes.warmup_commands, sizes.throughput_limit).await;
    let mut runs = Vec::new();
    for &clients in &sizes.concurrency {
        eprintln!(
            "[{}] throughput: {} commands from {clients} clients…",
            mode.name, sizes.throughput_commands
        );
        let run = throughput(
            mode,
            clients,
            sizes.throughput_commands,
            sizes.throughput_limit,
        )
        .await;
        eprintln!(
            "[{}]   {:.0} commands/s, p50 {} p99 {}, {} errors; CPU per command: {}",
            mode.name,
            run.per_second,
            millis(run.p50),
            millis(run.p99),
            run.errors,
            run.cpu
        );
        runs.push(run);
    }
    eprintln!(
        "[{}] lag: {:.0} commands/s for {} s…",
        mode.name,
        sizes.lag_rate(),
        sizes.lag_duration.as_secs()
    );
    let lag = lag(mode, sizes).await;
    eprintln!(
        "[{}]   lag p50/p99 {} max {} ({} issued, {} observed, {} failed); send → response {}, \
         → stored {}, → on NATS {}; {} polls, mean {}; CPU per command: {}",
        mode.name,
        lag.lag.show(),
        millis(lag.max),
        lag.issued,
        lag.observed,
        lag.failed,
        lag.response.show(),
        lag.stored.show(),
        lag.on_nats.show(),
        lag.polls,
        millis(lag.mean_poll),
        lag.cpu
    );
    if let Some(age) = lag.foreign_transaction {
        eprintln!(
            "[{}]   oldest xid-holding transaction in another database seen: {}",
            mode.name,
            millis(age)
        );
    }
    (runs, lag)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

/// The commit measured, and whether the working tree had changes.
fn commit() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    // What differs from the commit (BENCHMARKS.md is this program's own output).
    let changed: Vec<String> = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md",
        ])
        .current_dir(&root)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|line| line.get(3..).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(match changed.len() {
        0 => format!("commit {head}"),
        1..=3 => format!(
            "commit {head} plus uncommitted changes to {}",
            changed.join(", ")
        ),
        n => format!("commit {head} plus uncommitted changes to {n} files"),
    })
}

fn report(
    throughputs: &[Throughput],
    lags: &[Lag],
    sizes: &Sizes,
    quick: bool,
    skipped: Option<&str>,
    baseline: Option<f64>,
) -> String {
    let mut out = String::new();
    let command = if quick {
        "cargo bench -p repitd --bench pipeline -- --quick"
    } else {
        "cargo bench -p repitd --bench pipeline"
    };
    let _ = writeln!(out, "## Lesson pipeline (repitd end to end)\n");
    let _ = writeln!(
        out,
        "Measured {} on {}{} with `{command}`{}; `repitd` built by that command with the bench \
         (release) profile{}.\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        commit().map(|c| format!(", {c},")).unwrap_or_default(),
        if skipped.is_none() {
            " (PostgreSQL from REPIT_TEST_POSTGRES_URL and NATS from REPIT_TEST_NATS_URL, as \
             `scripts/test` sets them up)"
        } else {
            ""
        },
        if binary_is_optimised() {
            ""
        } else {
            " — NOT the release binary, figures are not representative"
        },
    );
    let _ = writeln!(
        out,
        "Modes: **embedded** is one `repitd serve` on its SQLite defaults (private data \
         directory); **distributed** is `repitd serve --target lesson`, `--target relay` and \
         `--target projections` as three processes on a fresh PostgreSQL database (event store \
         and read models) and a JetStream stream of their own. Bench client, servers and \
         databases share the machine{}.\n",
        baseline
            .map(|b| format!(
                "; the machine was {:.0}% busy in the second before the run (other work)",
                b * 100.0
            ))
            .unwrap_or_default()
    );
    if let Some(reason) = skipped {
        let _ = writeln!(out, "Distributed mode skipped: {reason}.\n");
    }
    let _ = writeln!(
        out,
        "### ScheduleLesson throughput through gRPC\n\n\
         {} calls per row (after {} warm-up calls), each for a fresh student of the client's own \
         signed-in tutor; N clients, one HTTP/2 connection and one call in flight each.\n",
        sizes.throughput_commands, sizes.warmup_commands
    );
    let _ = writeln!(
        out,
        "| mode | clients in flight | commands/s | latency p50 / p99 | ok / errors | CPU per command |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for t in throughputs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} / {} | {} / {} | {} |",
            t.mode,
            t.clients,
            t.per_second,
            millis(t.p50),
            millis(t.p99),
            t.ok,
            t.errors,
            t.cpu
        );
    }
    let _ = writeln!(
        out,
        "\n### Command-to-read-model lag at a steady {:.0} commands/s\n\n\
         Open loop: one ScheduleLesson every {} ms for {} s, not waiting for earlier calls. Lag is \
         from sending a call to its row in the `lessons` read model, measured two ways: *row \
         written* is the row's own `projected_at_us` (stamped by the projection inside the \
         transaction that commits it, read once after the run, so measuring costs the system \
         nothing; the target is judged on it), and *row seen by a poll* polls the read-model \
         database directly every {} ms (SQLite `read-models.db` / the PostgreSQL view), so it adds \
         up to one poll interval plus the poll query and loads the machine it measures. The \
         stages are measured from the same \
         send: the ScheduleLesson response; and, distributed only, the `created` time the store \
         gave the LessonScheduled event (from the relay's `Repit-Created` header) and the \
         relay's message for it reaching a plain NATS subscriber on the stream's subjects.\n",
        sizes.lag_rate(),
        sizes.lag_interval.as_millis(),
        sizes.lag_duration.as_secs(),
        sizes.poll_interval.as_millis()
    );
    let _ = writeln!(
        out,
        "| mode | send → row written p50 / p99 | target | send → row seen by a poll p50 / p99 (max) | issued / observed / failed | send → response p50 / p99 | send → stored | send → on NATS | polls (mean query) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for l in lags {
        let target = if l.mode == "distributed" {
            let met = l.observed == l.issued && l.written.p99 <= Duration::from_millis(50);
            format!("p99 ≤ 50 ms: {}", if met { "met" } else { "missed" })
        } else {
            "—".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {target} | {} ({}) | {} / {} / {} | {} | {} | {} | {} ({}) |",
            l.mode,
            l.written.show(),
            l.lag.show(),
            millis(l.max),
            l.issued,
            l.observed,
            l.failed,
            l.response.show(),
            l.stored.show(),
            l.on_nats.show(),
            l.polls,
            millis(l.mean_poll),
        );
    }
    let _ = writeln!(out, "\nCPU per command during the lag runs:\n");
    for l in lags {
        let _ = writeln!(out, "- {}: {}", l.mode, l.cpu);
    }
    for l in lags {
        if let Some(age) = l.foreign_transaction {
            let seen = if age.is_zero() {
                "none was seen".to_owned()
            } else {
                format!("the oldest seen was {} old", millis(age))
            };
            let _ = writeln!(
                out,
                "\nTransactions holding a transaction id in other databases of the same PostgreSQL \
                 server during the {} lag run (sampled every ~50 polls): {seen}. Such a \
                 transaction holds back the `$all` horizon the relay reads below (ADR 6): events \
                 committed after it started are relayed only once it ends, and the lag above \
                 would include that wait.",
                l.mode
            );
        }
    }
    let _ = writeln!(
        out,
        "\nAnchor: Marten's async daemon polls every 250 ms–1 s; the distributed target here is \
         lag p99 ≤ 50 ms. CPU per command is the CPU time (user + system, 10 ms ticks) each \
         process used during the run divided by the commands issued (for PostgreSQL and NATS, \
         all their processes on the machine); \"machine\" is the busy share of all cores."
    );
    out
}

/// Replaces the section between the pipeline markers in BENCHMARKS.md (or appends it).
fn write_benchmarks_md(section: &str) -> std::io::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let begin = "<!-- pipeline:begin -->";
    let end = "<!-- pipeline:end -->";
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
    eprintln!("repitd under test: {}", repitd().display());
    if !binary_is_optimised() {
        eprintln!("WARNING: that is not target/release/repitd; figures are not representative");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let baseline = machine_busy(Duration::from_secs(1)).await;
        if let Some(busy) = baseline {
            eprintln!("machine {:.0}% busy before the run", busy * 100.0);
        }
        let started = Instant::now();
        let mut throughputs = Vec::new();
        let mut lags = Vec::new();

        let embedded = Mode::embedded().await;
        let (runs, lag) = measure(&embedded, &sizes).await;
        embedded.stop().await;
        throughputs.extend(runs);
        lags.push(lag);

        let postgres = std::env::var("REPIT_TEST_POSTGRES_URL")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let nats = std::env::var("REPIT_TEST_NATS_URL")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let skipped = match (postgres, nats) {
            (Some(postgres), Some(nats)) => {
                let resources = DistributedResources::create(postgres, nats).await;
                // Measured in a task of its own, so a panic still reaches the clean-up below
                // (the servers are killed when the task's `Mode` is dropped).
                let task_resources = resources.clone();
                let task_sizes = sizes.clone();
                let result = tokio::spawn(async move {
                    let mode = Mode::distributed(&task_resources).await;
                    let figures = measure(&mode, &task_sizes).await;
                    mode.stop().await;
                    figures
                })
                .await;
                resources.remove().await;
                match result {
                    Ok((runs, lag)) => {
                        throughputs.extend(runs);
                        lags.push(lag);
                    }
                    Err(e) => panic!("the distributed run failed: {e}"),
                }
                None
            }
            _ => {
                eprintln!(
                    "SKIPPED: distributed mode needs REPIT_TEST_POSTGRES_URL and \
                     REPIT_TEST_NATS_URL (scripts/test exports them)"
                );
                Some("REPIT_TEST_POSTGRES_URL and/or REPIT_TEST_NATS_URL not set")
            }
        };

        let section = report(&throughputs, &lags, &sizes, quick, skipped, baseline);
        println!("{section}");
        eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
        match write_benchmarks_md(&section) {
            Ok(path) => eprintln!("written to {}", path.display()),
            Err(e) => eprintln!("could not write BENCHMARKS.md: {e}"),
        }
    });
}
