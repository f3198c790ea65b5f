//! The PostgreSQL backend: many concurrent writers, no global lock, `$all` that never skips.
//!
//! - `writer`: a few writer tasks, each owning a share of the streams, committing concurrent
//!   appends in groups (usually one statement and one commit per group), and the notifier that
//!   tells other processes.
//! - `read`: stream and `$all` queries, paging below the transaction horizon, row decoding.
//! - `subscribe`: catch-up subscriptions woken after commits (in-process, or LISTEN/NOTIFY from
//!   other processes, received here by the listener task) with a periodic poll as a fallback.
//!
//! Positions are `(transaction id, sequence value)`: each event row records
//! `pg_current_xact_id()` and a value of a sequence, and `$all` is ordered by the pair. Readers
//! only expose transactions below their snapshot's xmin, all of which have ended, so an event
//! whose transaction commits after a later one is delayed, never skipped (ADR 0006).
//!
//! Schema: `migrations/postgres/` (embedded, applied on open) inside the schema named by
//! [`PostgresOptions::schema`]; every connection's `search_path` points there, so one database
//! holds isolated stores for tenants or tests.

mod read;
mod subscribe;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::limits::{Limits, check_append};
use crate::model::{
    AppendResult, ExpectedRevision, InvalidStreamName, NewEvent, ReadAllOptions, ReadStreamOptions,
    StreamMetadata, StreamName, SubscribeFrom, SubscribeToAllOptions, VersionedMetadata,
};
use crate::store::{EventStore, EventStream, Subscription};
use subscribe::Feed;
use writer::{Command, Shared};

/// How to open a PostgreSQL event store.
#[derive(Clone)]
pub struct PostgresOptions {
    /// The server and database (and credentials, TLS).
    pub connect: PgConnectOptions,
    /// The schema that holds the store: lowercase ASCII letters, digits and `_`, not starting
    /// with a digit, at most 63 bytes (so it needs no quoting anywhere).
    pub schema: String,
    /// Whether opening creates the schema when it is missing.
    pub create_schema: bool,
    /// Append limits.
    pub limits: Limits,
    /// Writer tasks, each with its own connection and share of the streams, committing its own
    /// groups: more overlap commits on the server, fewer put more appends in each commit. Two
    /// suit a small server (on two cores, 64 concurrent writers go fastest with one or two);
    /// raise it with the server's cores.
    pub writers: usize,
    /// Connections for reads and subscriptions.
    pub read_connections: u32,
    /// How often idle subscriptions look at the database without being woken, in case a
    /// notification was lost.
    pub poll_interval: Duration,
}

impl PostgresOptions {
    /// Defaults for the store in `schema` of the database `connect` names.
    pub fn new(connect: PgConnectOptions, schema: impl Into<String>) -> Self {
        Self {
            connect,
            schema: schema.into(),
            create_schema: true,
            limits: Limits::default(),
            writers: 2,
            read_connections: 8,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Defaults for the store in `schema` of the database at `url`
    /// (`postgres://user@host:5432/database`).
    pub fn from_url(url: &str, schema: impl Into<String>) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(Error::unavailable)?;
        Ok(Self::new(connect, schema))
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connect options hold the password; show where, not how.
        f.debug_struct("PostgresOptions")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .field("schema", &self.schema)
            .field("create_schema", &self.create_schema)
            .field("limits", &self.limits)
            .field("writers", &self.writers)
            .field("read_connections", &self.read_connections)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Commands queued per writer before appends wait for room, which pushes back on writers faster
/// than the server.
const WRITE_QUEUE: usize = 1024;

/// How long a held append (conformance suite only) may stay open before it commits anyway, so a
/// broken test cannot hold every reader's horizon back for good.
#[cfg(feature = "conformance")]
const MAX_HOLD: Duration = Duration::from_secs(30);

/// The PostgreSQL event store. Cheap to clone (all clones share the writers and pools); the
/// writers and the listener stop when the last clone is dropped, and subscriptions then end
/// with [`Error::Unavailable`].
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    pool: PgPool,
    writers: Vec<mpsc::Sender<Command>>,
    shared: Arc<Shared>,
    commits: watch::Receiver<u64>,
    poll_interval: Duration,
    /// Dropping it stops the listener task.
    _stop_listener: oneshot::Sender<()>,
}

impl fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("schema", &self.inner.shared.schema)
            .field("limits", &self.inner.limits)
            .field("writers", &self.inner.writers.len())
            .finish_non_exhaustive()
    }
}

/// Schema names are spliced into SQL and `search_path`; this keeps them safe without quoting.
fn check_schema(schema: &str) -> Result<()> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::unavailable(format!(
            "invalid schema name {schema:?}: use lowercase ascii letters, digits and _, \
             at most 63 bytes, not starting with a digit"
        )))
    }
}

impl PostgresEventStore {
    /// Opens the store in `schema` of the database at `url` with default options.
    pub async fn open(url: &str, schema: &str) -> Result<Self> {
        Self::open_with(PostgresOptions::from_url(url, schema)?).await
    }

    /// Opens (creating the schema if allowed) a store, applying pending migrations.
    pub async fn open_with(options: PostgresOptions) -> Result<Self> {
        let schema = options.schema.clone();
        check_schema(&schema)?;
        if options.create_schema {
            create_schema(&options.connect, &schema).await?;
        }
        let connect = options.connect.clone().options([
            ("search_path", schema.as_str()),
            // Every statement of the store is an index probe or an ordered index range scan,
            // and its plan is cached per connection. Without fresh statistics (a young table,
            // autovacuum off) the planner would cache a sequential or bitmap scan while a table
            // is small and keep it as the table grows; these settings keep it on the indexes.
            ("enable_seqscan", "off"),
            ("enable_bitmapscan", "off"),
            // Disabled paths cost so much on paper that JIT compilation would kick in for the
            // statements that cannot avoid them (the migrations' bookkeeping).
            ("jit", "off"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            .connect_with(connect.clone())
            .await
            .map_err(Error::unavailable)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(Error::unavailable)?;
        check_transaction_ids(&pool).await?;

        let (commits_tx, commits) = watch::channel(0);
        let (committed_here, committed) = watch::channel(0);
        let payload = format!("{schema} {}", Uuid::new_v4().simple());
        let shared = Arc::new(Shared {
            payload: payload.clone(),
            schema: schema.clone(),
            commits: commits_tx,
            committed_here,
        });
        let notify_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .test_before_acquire(false)
            .connect_lazy_with(connect.clone());
        tokio::spawn(writer::notify(notify_pool, payload, committed));
        // Its own pool of one, which PgListener uses to reconnect.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(connect.clone());
        let mut listener = PgListener::connect_with(&listen_pool)
            .await
            .map_err(Error::unavailable)?;
        listener
            .listen(writer::CHANNEL)
            .await
            .map_err(Error::unavailable)?;
        let (stop_listener, stop) = oneshot::channel();
        tokio::spawn(listen(listener, Arc::clone(&shared), stop));

        // Writers keep their connection between groups, so the pool never tests one on
        // acquire; a broken connection is dropped by the writer that finds it.
        let writer_pool = PgPoolOptions::new()
            .max_connections(u32::try_from(options.writers.max(1)).unwrap_or(u32::MAX))
            .min_connections(0)
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let writers = (0..options.writers.max(1))
            .map(|_| {
                let (sender, commands) = mpsc::channel(WRITE_QUEUE);
                tokio::spawn(writer::run(
                    writer_pool.clone(),
                    commands,
                    Arc::clone(&shared),
                ));
                sender
            })
            .collect();
        tracing::debug!(schema, "opened postgres event store");
        Ok(Self {
            inner: Arc::new(Inner {
                limits: options.limits,
                pool,
                writers,
                shared,
                commits,
                poll_interval: options.poll_interval,
                _stop_listener: stop_listener,
            }),
        })
    }

    /// The schema that holds the store.
    pub fn schema(&self) -> &str {
        &self.inner.shared.schema
    }

    async fn call<T>(
        &self,
        stream: &StreamName,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let writer = &self.inner.writers[writer::route(stream, self.inner.writers.len())];
        let (reply, answer) = oneshot::channel();
        writer
            .send(command(reply))
            .await
            .map_err(|_| Error::unavailable("the event store writer stopped"))?;
        answer
            .await
            .map_err(|_| Error::unavailable("the event store writer stopped"))?
    }

    fn feed(&self) -> Feed {
        Feed {
            pool: self.inner.pool.clone(),
            commits: self.inner.commits.clone(),
            poll_interval: self.inner.poll_interval,
        }
    }

    /// Starts an append whose transaction stays open, having taken its transaction id, until
    /// the returned handle is committed. For the conformance suite only.
    #[cfg(feature = "conformance")]
    pub async fn hold_append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<crate::conformance::HeldAppend> {
        let events = check_append(stream, events, &self.inner.limits).await?;
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let (reply, answer) = oneshot::channel();
        let command = Command::Append {
            stream: stream.clone(),
            expected: ExpectedRevision::Any,
            events,
            reply,
        };
        let (pool, shared) = (self.inner.pool.clone(), Arc::clone(&self.inner.shared));
        tokio::spawn(async move {
            let pause = move || async move {
                let _ = started_tx.send(());
                // Either outcome of the wait means "commit now": released, or held too long.
                let _ = tokio::time::timeout(MAX_HOLD, release_rx).await;
            };
            // A connection and kept rows of its own: the held transaction must not keep a
            // writer task (and its streams) waiting.
            let mut rows = writer::Rows::default();
            writer::execute(
                &mut None,
                &pool,
                &mut rows,
                vec![command],
                &shared,
                Some(pause),
            )
            .await;
        });
        let stopped = || Error::unavailable("the held append stopped");
        if started.await.is_err() {
            // The group failed before it could pause: its answer says why.
            return Err(answer
                .await
                .map_err(|_| stopped())?
                .err()
                .unwrap_or_else(stopped));
        }
        Ok(crate::conformance::HeldAppend::new(release, async move {
            answer.await.map_err(|_| stopped())?
        }))
    }
}

async fn create_schema(connect: &PgConnectOptions, schema: &str) -> Result<()> {
    let mut connection = connect.connect().await.map_err(Error::unavailable)?;
    let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut connection)
        .await;
    match created {
        Ok(_) => {}
        // Another process created it at the same moment (IF NOT EXISTS does not cover the race).
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
        Err(error) => return Err(Error::unavailable(error)),
    }
    if let Err(error) = connection.close().await {
        tracing::debug!(%error, "closing the schema connection");
    }
    Ok(())
}

/// Positions are only ordered while transaction ids keep growing. A dump restored into a new
/// cluster restarts them lower, which would sort new events before old ones and make readers
/// that resume from a stored position skip them; refuse to open rather than do that.
async fn check_transaction_ids(pool: &PgPool) -> Result<()> {
    let behind: Option<bool> = sqlx::query_scalar(
        "SELECT e.transaction_id >= pg_snapshot_xmax(pg_current_snapshot()) \
         FROM events e ORDER BY e.transaction_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(Error::unavailable)?;
    if behind == Some(true) {
        return Err(Error::Corrupt(
            "stored positions are ahead of this cluster's transaction ids (restored into a new \
             cluster?); appending would reorder $all"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Wakes this process's subscriptions when another process (or another store on the same
/// schema) commits. Runs until the store is dropped.
async fn listen(mut listener: PgListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let prefix = format!("{} ", shared.schema);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if payload.starts_with(&prefix) && payload != shared.payload {
                        shared.heard();
                    }
                }
                // The connection was lost and re-established: notifications sent meanwhile are
                // gone, so look.
                Ok(None) => shared.heard(),
                Err(error) => {
                    tracing::warn!(%error, schema = shared.schema, "event store listener failed");
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => shared.heard(),
                    }
                }
            },
        }
    }
}

fn writable(stream: &StreamName) -> Result<()> {
    if stream.is_system() {
        return Err(InvalidStreamName::Reserved.into());
    }
    Ok(())
}

#[async_trait]
impl EventStore for PostgresEventStore {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let events = check_append(stream, events, &self.inner.limits).await?;
        self.call(stream, |reply| Command::Append {
            stream: stream.clone(),
            expected,
            events,
            reply,
        })
        .await
    }

    fn read_stream(&self, stream: &StreamName, options: ReadStreamOptions) -> EventStream {
        read::read_stream(self.inner.pool.clone(), stream.clone(), options)
    }

    fn read_all(&self, options: ReadAllOptions) -> EventStream {
        read::read_all(self.inner.pool.clone(), self.inner.commits.clone(), options)
    }

    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription {
        subscribe::to_stream(self.feed(), stream.clone(), from)
    }

    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription {
        subscribe::to_all(self.feed(), options)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()> {
        writable(stream)?;
        self.call(stream, |reply| Command::Delete {
            stream: stream.clone(),
            expected,
            tombstone: false,
            reply,
        })
        .await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<()> {
        writable(stream)?;
        self.call(stream, |reply| Command::Delete {
            stream: stream.clone(),
            expected,
            tombstone: true,
            reply,
        })
        .await
    }

    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>> {
        let row: Option<(bool, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT tombstoned, metadata, metadata_revision FROM streams WHERE name = $1",
        )
        .bind(stream.as_str())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(Error::unavailable)?;
        match row {
            Some((true, _, _)) => Err(Error::StreamDeleted {
                stream: stream.clone(),
            }),
            Some((false, Some(json), Some(revision))) => Ok(Some(VersionedMetadata {
                revision: read::stored_u64(revision, "metadata revision")?,
                metadata: StreamMetadata::from_json(json.as_bytes())?,
            })),
            Some((false, _, _)) | None => Ok(None),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: &StreamMetadata,
    ) -> Result<u64> {
        writable(stream)?;
        metadata.validate()?;
        let json = metadata.to_json();
        self.call(stream, |reply| Command::SetMetadata {
            stream: stream.clone(),
            expected,
            json,
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_that_would_need_quoting_are_refused() {
        for good in ["events", "tenant_42", "_x", &"a".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good:?}");
        }
        for bad in ["", "1x", "Events", "a-b", "a b", "a\"b", &"a".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad:?}");
        }
    }
}
