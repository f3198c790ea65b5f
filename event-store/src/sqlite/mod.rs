//! The embedded default backend: one SQLite file in WAL mode, nothing to install.
//!
//! - `writer`: the single writer task with group commit; assigns gap-free positions.
//! - `read`: stream and `$all` queries, paging, row decoding.
//! - `subscribe`: catch-up subscriptions woken by the writer after each commit.
//!
//! Positions are the `events` table's row ids, 1, 2, 3, … without gaps (assigned under the
//! write lock, rolled back with a failed append), exposed as `Position::new(n, n)`.
//!
//! Schema: `migrations/sqlite/` (embedded, applied on open). Readers use a small pool of
//! read-only connections; WAL lets them read while the writer commits. All SQLite calls run on
//! sqlx's per-connection worker threads, so the async runtime is never blocked.

mod read;
mod subscribe;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::limits::{Limits, check_append};
use crate::model::{
    AppendResult, ExpectedRevision, InvalidStreamName, NewEvent, ReadAllOptions, ReadStreamOptions,
    StreamMetadata, StreamName, SubscribeFrom, SubscribeToAllOptions, VersionedMetadata,
};
use crate::store::{EventStore, EventStream, Subscription};
use subscribe::Feed;
use writer::Command;

/// How hard a commit is pushed to disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// `synchronous = FULL`: a commit survives power loss once acknowledged. The default for a
    /// system of record; group commit keeps the cost of the fsync shared.
    #[default]
    Full,
    /// `synchronous = NORMAL`: survives a crash of the process, but the last commits may be
    /// lost on power loss. For tests and throwaway data.
    Normal,
}

/// How to open a SQLite event store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// Append limits.
    pub limits: Limits,
    /// Commit durability.
    pub durability: Durability,
    /// Read-only connections for reads and subscriptions.
    pub read_connections: u32,
    /// How long a connection waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// How often idle subscriptions look at the file without being woken, so events written by
    /// another process (sharing the file) still reach them.
    pub poll_interval: Duration,
}

impl SqliteOptions {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            limits: Limits::default(),
            durability: Durability::default(),
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Commands queued for the writer before appends wait for room, which pushes back on writers
/// faster than the disk.
const WRITE_QUEUE: usize = 1024;

/// The SQLite event store. Cheap to clone (all clones share one writer and one pool); the
/// writer stops when the last clone is dropped, and subscriptions then end with
/// [`Error::Unavailable`].
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    limits: Limits,
    pool: SqlitePool,
    writer: mpsc::Sender<Command>,
    head: watch::Receiver<u64>,
    poll_interval: Duration,
}

impl fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("path", &self.inner.path)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl SqliteEventStore {
    /// Opens (creating if needed) the store at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(SqliteOptions::new(path.as_ref())).await
    }

    /// Opens (creating if needed) a store, applying pending migrations.
    pub async fn open_with(options: SqliteOptions) -> Result<Self> {
        let synchronous = match options.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        };
        let base = SqliteConnectOptions::new()
            .filename(&options.path)
            .busy_timeout(options.busy_timeout)
            .synchronous(synchronous);
        // The writer's connection comes from a pool of exactly one, which keeps sqlx's
        // migrator on its public, `Send`-friendly path and closes the connection when the
        // writer task drops it.
        let writer_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(Error::unavailable)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer_pool)
            .await
            .map_err(Error::unavailable)?;
        let mut writer_conn = writer_pool.acquire().await.map_err(Error::unavailable)?;
        let head = read::head(&mut writer_conn).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            .connect_with(base.read_only(true))
            .await
            .map_err(Error::unavailable)?;
        let (head_tx, head_rx) = watch::channel(u64::try_from(head).unwrap_or_default());
        let (writer, commands) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer::run(writer_conn, commands, head_tx));
        tracing::debug!(path = %options.path.display(), head, "opened sqlite event store");
        Ok(Self {
            inner: Arc::new(Inner {
                path: options.path,
                limits: options.limits,
                pool,
                writer,
                head: head_rx,
                poll_interval: options.poll_interval,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
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
            head: self.inner.head.clone(),
            poll_interval: self.inner.poll_interval,
        }
    }

    /// Starts an append that stays uncommitted until the returned handle is committed, holding
    /// the write transaction open meanwhile. For the conformance suite only.
    #[cfg(feature = "conformance")]
    pub async fn hold_append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<crate::conformance::HeldAppend> {
        let events = check_append(stream, events, &self.inner.limits).await?;
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Command::Hold {
                stream: stream.clone(),
                events,
                started: started_tx,
                release: release_rx,
                reply,
            })
            .await
            .map_err(|_| Error::unavailable("the event store writer stopped"))?;
        started
            .await
            .map_err(|_| Error::unavailable("the event store writer stopped"))?;
        Ok(crate::conformance::HeldAppend::new(release, async move {
            answer
                .await
                .map_err(|_| Error::unavailable("the event store writer stopped"))?
        }))
    }
}

fn writable(stream: &StreamName) -> Result<()> {
    if stream.is_system() {
        return Err(InvalidStreamName::Reserved.into());
    }
    Ok(())
}

#[async_trait]
impl EventStore for SqliteEventStore {
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
        self.call(|reply| Command::Append {
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
        read::read_all(self.inner.pool.clone(), options)
    }

    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription {
        subscribe::to_stream(self.feed(), stream.clone(), from)
    }

    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription {
        subscribe::to_all(self.feed(), options)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()> {
        writable(stream)?;
        self.call(|reply| Command::Delete {
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
        self.call(|reply| Command::Delete {
            stream: stream.clone(),
            expected,
            tombstone: true,
            reply,
        })
        .await
    }

    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>> {
        let row: Option<(bool, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT tombstoned, metadata, metadata_revision FROM streams WHERE name = ?",
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
                revision: u64::try_from(revision).map_err(|_| {
                    Error::Corrupt(format!("negative metadata revision {revision}"))
                })?,
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
        self.call(|reply| Command::SetMetadata {
            stream: stream.clone(),
            expected,
            json,
            reply,
        })
        .await
    }
}
