//! The writers: a few connections, each owning a share of the streams, each writing groups.
//!
//! One commit per append would bind throughput to the commit rate. Instead every command is
//! routed by its stream to one of a few writer tasks; a task takes everything queued for it and
//! writes the whole group with one statement, whatever its size:
//!
//! 1. each command is decided in memory, in arrival order, exactly as the SQLite writer does
//!    (tombstone, expected revision, idempotency), against the stream rows as the task last
//!    wrote or read them — it keeps them, because no other task of this process writes its
//!    streams — so a refused command costs the others nothing: it contributes no rows;
//! 2. `WRITE` inserts all events (`unnest` of arrays) and writes the changed stream rows, each
//!    only if its version is still the one decided on, and commits on its own.
//!
//! What the task does not know is read first (`READ`: stream rows it has not seen). Whatever a
//! kept row cannot settle — a refusal, which must not rest on a row another process may have
//! changed, or a retry, recognised by event ids already stored — makes it read every row of the
//! group and where its event ids are stored, in one snapshot, and decide again. If another
//! process changed one of the rows, or stored one of the event ids, `WRITE` fails whole and the
//! group is read and decided again.
//!
//! Deciding before writing means a command never has to be undone, so no savepoints (more than
//! 64 subtransactions in one transaction slow down every other session's snapshots), and the
//! common group costs one round trip and one commit.
//!
//! Writer tasks run in parallel, so the server overlaps their commits, and routing by stream
//! means no two tasks of one process ever write the same stream row. No lock is held between
//! groups, none is global, and a transaction id is taken only by `WRITE`, after its group was
//! collected: an append acknowledged before another one was sent always gets the lower
//! transaction id, so `$all` order follows completion.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::read::{content_type_code, parse_xid, stored_u64, to_i64};
use crate::error::{Error, Result};
use crate::model::{
    AppendResult, CurrentRevision, EventId, ExpectedRevision, NewEvent, Position, StreamName,
};

/// The most commands in one transaction, so one group cannot hold its locks for long.
const MAX_GROUP: usize = 512;

/// The most event bytes in one transaction, for the same reason.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// How many times a writer task yields to let callers of its last group send their next
/// command before it starts a group with fewer than half as many.
const LINGER_YIELDS: usize = 16;

/// How often a group is run again after a conflict with another transaction (a concurrent
/// insert of the same event id, a deadlock with a writer in another process).
const MAX_ATTEMPTS: usize = 4;

/// The channel every store notifies on after a commit; the payload names the schema and the
/// store instance, so listeners ignore other schemas and their own commits.
pub(super) const CHANNEL: &str = "repit_event_store";

/// A request to a writer task. Batches are validated before they get here.
#[derive(Debug)]
pub(super) enum Command {
    Append {
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    Delete {
        stream: StreamName,
        expected: ExpectedRevision,
        tombstone: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    SetMetadata {
        stream: StreamName,
        expected: ExpectedRevision,
        json: String,
        reply: oneshot::Sender<Result<u64>>,
    },
}

impl Command {
    pub(super) fn stream(&self) -> &StreamName {
        match self {
            Self::Append { stream, .. }
            | Self::Delete { stream, .. }
            | Self::SetMetadata { stream, .. } => stream,
        }
    }

    fn size(&self) -> usize {
        match self {
            Self::Append { events, .. } => events.iter().map(NewEvent::size).sum(),
            Self::Delete { .. } | Self::SetMetadata { .. } => 0,
        }
    }

    fn events(&self) -> &[NewEvent] {
        match self {
            Self::Append { events, .. } => events,
            Self::Delete { .. } | Self::SetMetadata { .. } => &[],
        }
    }

    /// Answers the caller; one that stopped waiting (dropped its future) does not care.
    fn answer(self, outcome: Result<Output>, known: &Known) {
        match self {
            Self::Append { reply, .. } => {
                let _ = reply.send(outcome.and_then(|o| o.appended(known)));
            }
            Self::Delete { reply, .. } => {
                let _ = reply.send(outcome.and_then(Output::deleted));
            }
            Self::SetMetadata { reply, .. } => {
                let _ = reply.send(outcome.and_then(Output::metadata_revision));
            }
        }
    }

    fn fail(self, error: Error) {
        self.answer(Err(error), &Known::default());
    }
}

/// Which writer task owns `stream`.
pub(super) fn route(stream: &StreamName, writers: usize) -> usize {
    // SipHash with fixed keys: stable for the life of the process, which is all routing needs.
    let mut hasher = DefaultHasher::new();
    stream.as_str().hash(&mut hasher);
    (hasher.finish() % writers.max(1) as u64) as usize
}

/// What writers share with the rest of the store.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) schema: String,
    /// The NOTIFY payload: schema and store instance.
    pub(super) payload: String,
    /// Bumped after every commit this process learns of (its own, or another's through the
    /// listener): wakes its subscriptions.
    pub(super) commits: watch::Sender<u64>,
    /// Bumped after this process's own commits: the notifier tells other processes.
    pub(super) committed_here: watch::Sender<u64>,
}

impl Shared {
    /// Announces a commit of this process.
    fn committed(&self) {
        self.committed_here.send_modify(|n| *n = n.wrapping_add(1));
        self.heard();
    }

    /// Wakes this process's subscriptions.
    pub(super) fn heard(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Runs until every sender is gone (the store was dropped).
pub(super) async fn run(pool: PgPool, mut commands: mpsc::Receiver<Command>, shared: Arc<Shared>) {
    let mut connection = None;
    let mut rows = Rows::default();
    let mut group = Vec::with_capacity(64);
    let mut last_len = 0;
    while let Some(first) = commands.recv().await {
        // Under load the callers answered by the last group send their next command right
        // away; when only a few have yet, let the rest catch up rather than split them over two
        // commits. Bounded, and skipped when the last group was small (no load to wait for).
        for _ in 0..LINGER_YIELDS {
            if 1 + commands.len() >= last_len / 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut bytes = first.size();
        group.push(first);
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match commands.try_recv() {
                Ok(next) => {
                    bytes += next.size();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        last_len = group.len();
        execute(
            &mut connection,
            &pool,
            &mut rows,
            std::mem::take(&mut group),
            &shared,
            None::<NoPause>,
        )
        .await;
    }
}

/// The type of "no pause before commit".
pub(super) type NoPause = fn() -> std::future::Ready<()>;

/// The stream rows a writer task last wrote or read, as it wrote or read them.
///
/// Only a guess about the database (another process may have changed a row since), which is why
/// `WRITE` checks each row's version and refusals are never decided on it.
#[derive(Debug, Default)]
pub(super) struct Rows(HashMap<String, StreamState>);

/// Rows kept per writer task; past this the task forgets them all and reads again as needed.
const MAX_KEPT_ROWS: usize = 16 * 1024;

impl Rows {
    fn forget(&mut self, group: &[Command]) {
        for command in group {
            self.0.remove(command.stream().as_str());
        }
    }

    fn keep(&mut self, streams: HashMap<String, StreamState>) {
        if self.0.len() + streams.len() > MAX_KEPT_ROWS {
            self.0.clear();
        }
        for (name, mut state) in streams {
            if state.changed {
                state.version = Some(state.version.map_or(0, |v| v + 1));
                state.changed = false;
                state.metadata = None;
            }
            self.0.insert(name, state);
        }
    }
}

/// Runs `group` on the connection in `slot` (acquiring one from `pool` if empty), deciding
/// again after conflicts with other processes, then answers every command and announces the
/// commit. `pause` runs inside the group's transaction just before it commits (the conformance
/// suite holds a transaction open there); without one the group's write is a single statement.
pub(super) async fn execute<P, F>(
    slot: &mut Option<PoolConnection<Postgres>>,
    pool: &PgPool,
    rows: &mut Rows,
    group: Vec<Command>,
    shared: &Shared,
    mut pause: Option<P>,
) where
    P: FnOnce() -> F,
    F: Future<Output = ()>,
{
    let mut attempt = 1;
    let failure = loop {
        let connection = match slot {
            Some(connection) => connection,
            None => match pool.acquire().await {
                Ok(connection) => slot.insert(connection),
                Err(error) => break Error::unavailable(error),
            },
        };
        // Kept rows are only trusted the first time: a conflict means another process writes
        // these streams too, and locking them is what guarantees progress.
        let careful = attempt > 1;
        match attempt_group(connection, &group, rows, careful, &mut pause).await {
            Ok(written) => {
                let wrote_events = written.wrote_events;
                rows.keep(written.streams);
                for (command, outcome) in group.into_iter().zip(written.outcomes) {
                    command.answer(outcome, &written.known);
                }
                if wrote_events {
                    shared.committed();
                }
                return;
            }
            Err(Attempt::Conflict(error)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "event store group conflicted, deciding again");
                rows.forget(&group);
                attempt += 1;
            }
            Err(Attempt::Conflict(error) | Attempt::Failed(error)) => {
                // The outcome may be unknown (a lost connection during the commit): whatever
                // was kept about these streams may be wrong now.
                rows.forget(&group);
                // The connection may be broken or mid-transaction; a fresh one is cheaper than
                // finding out.
                if let Some(mut connection) = slot.take() {
                    connection.close_on_drop();
                }
                break error;
            }
        }
    };
    let reason = chain(&failure);
    tracing::error!(error = reason, "event store write failed");
    for command in group {
        command.fail(Error::unavailable(format!("write failed: {reason}")));
    }
}

/// An error with its sources, for a message that says what the driver said.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Tells other processes' subscriptions that this one committed events, until the store is
/// dropped.
///
/// A task of its own, so writers never wait for it and a burst of commits costs one NOTIFY.
/// Outside the write transactions: a NOTIFY inside one would take PostgreSQL's global notify
/// lock through the commit's flush and serialise every writer.
pub(super) async fn notify(pool: PgPool, payload: String, mut committed: watch::Receiver<u64>) {
    while committed.changed().await.is_ok() {
        committed.borrow_and_update();
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload.as_str())
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            // Other processes' subscriptions still find the events when they next poll.
            tracing::warn!(%error, "failed to notify event store listeners");
        }
    }
}

/// Why one run of a group did not commit.
enum Attempt {
    /// Another transaction got in the way; running the group again will decide differently.
    Conflict(Error),
    /// Anything else: the group fails.
    Failed(Error),
}

fn classify(error: sqlx::Error) -> Attempt {
    // 40001 serialization_failure (`check_streams_written`: a stream row changed since it was
    // read), 23505 unique_violation (an event id or stream name stored concurrently),
    // 40P01 deadlock_detected. The statement rolled back whole; an I/O error leaves the outcome
    // unknown and is never retried.
    let retryable = matches!(
        &error,
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "23505" | "40P01"))
    );
    if retryable {
        Attempt::Conflict(Error::unavailable(error))
    } else {
        Attempt::Failed(Error::unavailable(error))
    }
}

/// A group that committed.
struct Written {
    outcomes: Vec<Result<Output>>,
    known: Known,
    /// The group's stream rows as decided (those with `changed` set were written).
    streams: HashMap<String, StreamState>,
    wrote_events: bool,
}

async fn attempt_group<P, F>(
    connection: &mut PgConnection,
    group: &[Command],
    rows: &Rows,
    careful: bool,
    pause: &mut Option<P>,
) -> std::result::Result<Written, Attempt>
where
    P: FnOnce() -> F,
    F: Future<Output = ()>,
{
    if !careful && pause.is_none() {
        // The write is one statement: it commits on its own, or fails and leaves nothing.
        return run_group(connection, group, rows, Mode::Trusting).await;
    }
    let mode = if careful {
        Mode::Locking
    } else {
        Mode::Trusting
    };
    let mut tx = connection.begin().await.map_err(classify)?;
    let written = match run_group(&mut tx, group, rows, mode).await {
        Ok(written) => written,
        Err(attempt) => {
            if let Err(error) = tx.rollback().await {
                return Err(Attempt::Failed(Error::unavailable(error)));
            }
            return Err(attempt);
        }
    };
    // Taken only now, so a run that conflicted before getting here still pauses when run again.
    if let Some(pause) = pause.take() {
        pause().await;
    }
    // A failed COMMIT leaves the outcome unknown: never run the group again after it.
    tx.commit()
        .await
        .map_err(|e| Attempt::Failed(Error::unavailable(e)))?;
    Ok(written)
}

/// How a group learns the state of its streams.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Decide on the rows the writer kept, reading only those it has not seen, and read again
    /// only to confirm a refusal. `WRITE` catches whatever was stale.
    Trusting,
    /// Inside a transaction: lock every row of the group (creating missing ones), then read them
    /// and the stored event ids, so no other process can change them before the commit.
    Locking,
}

/// Where an event id is stored (or, for this group's new events, will be).
#[derive(Clone, Debug)]
struct Stored {
    stream: String,
    revision: u64,
    /// `None` for this group's events until the insert has returned their sequence values.
    position: Option<Position>,
}

type Known = HashMap<EventId, Stored>;

/// A command's successful outcome, decided before the insert.
enum Output {
    /// The append's last event (new, or stored by the original append of a retry).
    Appended {
        revision: u64,
        last: EventId,
    },
    Deleted,
    MetadataRevision(u64),
}

impl Output {
    fn appended(self, known: &Known) -> Result<AppendResult> {
        match self {
            Self::Appended { revision, last } => {
                let position = known
                    .get(&last)
                    .and_then(|stored| stored.position)
                    .ok_or_else(|| Error::Corrupt(format!("no position for event {last}")))?;
                Ok(AppendResult {
                    next_expected_revision: revision,
                    position,
                })
            }
            Self::Deleted | Self::MetadataRevision(_) => Err(mismatch()),
        }
    }

    fn deleted(self) -> Result<()> {
        match self {
            Self::Deleted => Ok(()),
            Self::Appended { .. } | Self::MetadataRevision(_) => Err(mismatch()),
        }
    }

    fn metadata_revision(self) -> Result<u64> {
        match self {
            Self::MetadataRevision(revision) => Ok(revision),
            Self::Appended { .. } | Self::Deleted => Err(mismatch()),
        }
    }
}

fn mismatch() -> Error {
    Error::Corrupt("write step answered with the wrong kind of outcome".to_owned())
}

/// A stream row as the group read it and changes it.
#[derive(Clone, Debug, Default)]
pub(super) struct StreamState {
    /// `None` while the row does not exist; else the version it was read at.
    version: Option<i64>,
    last_revision: Option<u64>,
    deleted: bool,
    deleted_before: u64,
    tombstoned: bool,
    /// Set only when this group replaces the metadata.
    metadata: Option<String>,
    metadata_revision: Option<u64>,
    changed: bool,
}

impl StreamState {
    fn current(&self) -> CurrentRevision {
        match self.last_revision {
            Some(revision) if !self.deleted => CurrentRevision::Current(revision),
            _ => CurrentRevision::NoStream,
        }
    }
}

/// An event row to insert.
struct NewRow<'a> {
    stream: &'a str,
    revision: u64,
    event: &'a NewEvent,
}

/// The group's stream rows and wherever its event ids are already stored, in one snapshot.
const READ: &str = "SELECT name AS stream, version, last_revision AS revision, deleted, \
       deleted_before, tombstoned, metadata_revision, NULL::uuid AS event_id, \
       NULL::text AS xid, NULL::bigint AS seq \
     FROM streams WHERE name = ANY ($1::text[]) \
     UNION ALL \
     SELECT stream, NULL, revision, NULL, NULL, NULL, NULL, event_id, transaction_id::text, seq \
     FROM events WHERE event_id = ANY ($2::uuid[])";

/// Everything a group decided, in one statement: creates new stream rows, changes existing
/// ones if their version is still the one read, inserts the events, and fails whole (through
/// `check_streams_written`) if any stream row was not written as decided.
///
/// The events are inserted only after every stream row has been written (the `WHERE` waits for
/// both counts), so the statement takes its row locks before it touches the events' unique
/// indexes: a writer of the same stream in another process that holds the row waits for nothing
/// this statement holds, and the two cannot deadlock.
///
/// `ORDER BY u.ord` makes `nextval` run in batch order (PostgreSQL evaluates volatile output
/// expressions after the sort), so sequence values follow the order events were decided in;
/// `record_positions` checks it. Every access to a table is bounded by an `= ANY` array, so a
/// plan cached while the tables were small stays cheap when they are large.
const WRITE: &str = "WITH created AS ( \
       INSERT INTO streams (name, last_revision, deleted, deleted_before, tombstoned, metadata, \
                            metadata_revision) \
       SELECT * FROM unnest($1::text[], $2::bigint[], $3::boolean[], $4::bigint[], \
                            $5::boolean[], $6::text[], $7::bigint[]) \
       ON CONFLICT (name) DO NOTHING \
       RETURNING 1), \
     changed AS ( \
       UPDATE streams AS s SET \
         version = s.version + 1, \
         last_revision = c.last_revision, \
         deleted = c.deleted, \
         deleted_before = c.deleted_before, \
         tombstoned = c.tombstoned, \
         metadata = COALESCE(c.metadata, s.metadata), \
         metadata_revision = c.metadata_revision \
       FROM unnest($8::text[], $9::bigint[], $10::bigint[], $11::boolean[], $12::bigint[], \
                   $13::boolean[], $14::text[], $15::bigint[]) \
         AS c (name, version, last_revision, deleted, deleted_before, tombstoned, metadata, \
               metadata_revision) \
       WHERE s.name = ANY ($8::text[]) AND s.name = c.name AND s.version = c.version \
       RETURNING 1), \
     inserted AS ( \
       INSERT INTO events (transaction_id, seq, stream, revision, event_id, event_type, \
                           content_type, data, metadata, created) \
       SELECT pg_current_xact_id(), nextval('events_seq'), u.stream, u.revision, u.event_id, \
              u.event_type, u.content_type, u.data, u.metadata, statement_timestamp() \
       FROM unnest($16::text[], $17::bigint[], $18::uuid[], $19::text[], $20::smallint[], \
                   $21::bytea[], $22::bytea[]) WITH ORDINALITY \
         AS u (stream, revision, event_id, event_type, content_type, data, metadata, ord) \
       WHERE (SELECT count(*) FROM created) + (SELECT count(*) FROM changed) = $23 \
       ORDER BY u.ord \
       RETURNING transaction_id, event_id, seq) \
     SELECT i.transaction_id::text AS xid, i.event_id, i.seq FROM inserted i \
     UNION ALL \
     SELECT NULL, NULL, check_streams_written($23::bigint, \
       (SELECT count(*) FROM created) + (SELECT count(*) FROM changed))";

/// Decides and writes a group (committing, unless the caller opened a transaction).
async fn run_group(
    connection: &mut PgConnection,
    group: &[Command],
    rows: &Rows,
    mode: Mode,
) -> std::result::Result<Written, Attempt> {
    let names: BTreeSet<&str> = group.iter().map(|c| c.stream().as_str()).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let mut decided = None;
    if mode == Mode::Trusting {
        let mut streams = HashMap::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in &names {
            match rows.0.get(*name) {
                Some(state) => {
                    streams.insert((*name).to_owned(), state.clone());
                }
                None => unknown.push(*name),
            }
        }
        if !unknown.is_empty() {
            let (read, _) = read(connection, &unknown, &[]).await?;
            streams.extend(read);
        }
        let plan = decide(group, streams, Known::new())?;
        // A refusal must rest on what the database holds now, and may be a retry that only
        // the stored event ids reveal.
        if plan.outcomes.iter().all(Result::is_ok) {
            decided = Some(plan);
        }
    } else {
        lock(connection, &names).await?;
    }
    let mut plan = match decided {
        Some(plan) => plan,
        None => {
            let ids: Vec<Uuid> = group
                .iter()
                .flat_map(Command::events)
                .map(|e| e.id.as_uuid())
                .collect();
            let (streams, known) = read(connection, &names, &ids).await?;
            decide(group, streams, known)?
        }
    };
    write(connection, &mut plan).await?;
    Ok(Written {
        wrote_events: !plan.rows.is_empty(),
        outcomes: plan.outcomes,
        known: plan.known,
        streams: plan.streams,
    })
}

/// Creates the rows of `names` that are missing (as absent streams: no revision, no metadata),
/// then locks them all, in name order so that writers in other processes doing the same cannot
/// deadlock with this one.
async fn lock(connection: &mut PgConnection, names: &[&str]) -> std::result::Result<(), Attempt> {
    sqlx::query(
        "INSERT INTO streams (name) SELECT name FROM unnest($1::text[]) AS name \
         ORDER BY name ON CONFLICT (name) DO NOTHING",
    )
    .bind(names)
    .execute(&mut *connection)
    .await
    .map_err(classify)?;
    sqlx::query("SELECT name FROM streams WHERE name = ANY ($1::text[]) ORDER BY name FOR UPDATE")
        .bind(names)
        .execute(&mut *connection)
        .await
        .map_err(classify)?;
    Ok(())
}

/// What a group decided.
struct Plan<'a> {
    outcomes: Vec<Result<Output>>,
    rows: Vec<NewRow<'a>>,
    streams: HashMap<String, StreamState>,
    known: Known,
}

/// Reads the rows of `names` (a default, absent state for those without one) and where `ids`
/// are stored.
async fn read(
    connection: &mut PgConnection,
    names: &[&str],
    ids: &[Uuid],
) -> std::result::Result<(HashMap<String, StreamState>, Known), Attempt> {
    let rows = sqlx::query(READ)
        .bind(names)
        .bind(ids)
        .fetch_all(&mut *connection)
        .await
        .map_err(classify)?;
    decode_read(&rows, names).map_err(Attempt::Failed)
}

/// Decides every command of the group, in order, each on the state the previous ones left.
fn decide(
    group: &[Command],
    mut streams: HashMap<String, StreamState>,
    mut known: Known,
) -> std::result::Result<Plan<'_>, Attempt> {
    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for command in group {
        let stream = command.stream();
        let state = streams.get_mut(stream.as_str()).ok_or_else(|| {
            Attempt::Failed(Error::Corrupt(format!("stream {stream} was not read")))
        })?;
        let outcome = match command {
            Command::Append {
                expected, events, ..
            } => decide_append(state, stream, *expected, events, &mut known, &mut rows),
            Command::Delete {
                expected,
                tombstone,
                ..
            } => decide_delete(state, stream, *expected, *tombstone).map(|()| Output::Deleted),
            Command::SetMetadata { expected, json, .. } => {
                decide_metadata(state, stream, *expected, json).map(Output::MetadataRevision)
            }
        };
        outcomes.push(outcome);
    }
    Ok(Plan {
        outcomes,
        rows,
        streams,
        known,
    })
}

/// Writes what `plan` decided, if anything, and records the new events' positions.
async fn write(
    connection: &mut PgConnection,
    plan: &mut Plan<'_>,
) -> std::result::Result<(), Attempt> {
    let (created, changed): (Vec<_>, Vec<_>) = plan
        .streams
        .iter()
        .filter(|(_, s)| s.changed)
        .partition(|(_, s)| s.version.is_none());
    if created.is_empty() && changed.is_empty() {
        return Ok(());
    }
    let rows = &plan.rows;
    let expected = i64::try_from(created.len() + changed.len()).unwrap_or(i64::MAX);
    let written = sqlx::query(WRITE)
        .bind(created.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
        .bind(
            created
                .iter()
                .map(|(_, s)| s.last_revision.map(to_i64))
                .collect::<Vec<_>>(),
        )
        .bind(created.iter().map(|(_, s)| s.deleted).collect::<Vec<_>>())
        .bind(
            created
                .iter()
                .map(|(_, s)| to_i64(s.deleted_before))
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, s)| s.tombstoned)
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, s)| s.metadata.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, s)| s.metadata_revision.map(to_i64))
                .collect::<Vec<_>>(),
        )
        .bind(changed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, s)| s.version).collect::<Vec<_>>())
        .bind(
            changed
                .iter()
                .map(|(_, s)| s.last_revision.map(to_i64))
                .collect::<Vec<_>>(),
        )
        .bind(changed.iter().map(|(_, s)| s.deleted).collect::<Vec<_>>())
        .bind(
            changed
                .iter()
                .map(|(_, s)| to_i64(s.deleted_before))
                .collect::<Vec<_>>(),
        )
        .bind(
            changed
                .iter()
                .map(|(_, s)| s.tombstoned)
                .collect::<Vec<_>>(),
        )
        .bind(
            changed
                .iter()
                .map(|(_, s)| s.metadata.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            changed
                .iter()
                .map(|(_, s)| s.metadata_revision.map(to_i64))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| to_i64(r.revision)).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.event.id.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.event.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| content_type_code(r.event.content_type))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.event.data.as_ref())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.event.metadata.as_ref())
                .collect::<Vec<_>>(),
        )
        .bind(expected)
        .fetch_all(&mut *connection)
        .await
        .map_err(classify)?;
    record_positions(&written, &plan.rows, &mut plan.known).map_err(Attempt::Failed)
}

/// Splits what `READ` returned into stream states (a default one for each stream without a
/// row) and stored event ids.
fn decode_read(rows: &[PgRow], names: &[&str]) -> Result<(HashMap<String, StreamState>, Known)> {
    let mut streams: HashMap<String, StreamState> = names
        .iter()
        .map(|name| ((*name).to_owned(), StreamState::default()))
        .collect();
    let mut known = Known::with_capacity(rows.len());
    let u64_of = |row: &PgRow, name: &str| -> Result<Option<u64>> {
        let value: Option<i64> = row.try_get(name).map_err(Error::unavailable)?;
        value.map(|v| stored_u64(v, name)).transpose()
    };
    for row in rows {
        let stream: String = row.try_get("stream").map_err(Error::unavailable)?;
        let event_id: Option<Uuid> = row.try_get("event_id").map_err(Error::unavailable)?;
        match event_id {
            Some(id) => {
                let xid: Option<String> = row.try_get("xid").map_err(Error::unavailable)?;
                let position = Position::new(
                    parse_xid(xid.as_deref().unwrap_or_default())?,
                    u64_of(row, "seq")?.unwrap_or_default(),
                );
                known.insert(
                    EventId::from_uuid(id),
                    Stored {
                        stream,
                        revision: u64_of(row, "revision")?.unwrap_or_default(),
                        position: Some(position),
                    },
                );
            }
            None => {
                let flag = |name: &str| -> Result<bool> {
                    let value: Option<bool> = row.try_get(name).map_err(Error::unavailable)?;
                    Ok(value.unwrap_or_default())
                };
                let state = StreamState {
                    version: row.try_get("version").map_err(Error::unavailable)?,
                    last_revision: u64_of(row, "revision")?,
                    deleted: flag("deleted")?,
                    deleted_before: u64_of(row, "deleted_before")?.unwrap_or_default(),
                    tombstoned: flag("tombstoned")?,
                    metadata: None,
                    metadata_revision: u64_of(row, "metadata_revision")?,
                    changed: false,
                };
                streams.insert(stream, state);
            }
        }
    }
    Ok((streams, known))
}

/// Fills in the positions of the events just inserted, checking they follow the batch order.
fn record_positions(written: &[PgRow], rows: &[NewRow<'_>], known: &mut Known) -> Result<()> {
    let mut inserted: HashMap<Uuid, (String, i64)> = HashMap::with_capacity(rows.len());
    for row in written {
        // The last row is `check_streams_written`'s, with no event.
        let Some(id) = row
            .try_get::<Option<Uuid>, _>("event_id")
            .map_err(Error::unavailable)?
        else {
            continue;
        };
        let xid: Option<String> = row.try_get("xid").map_err(Error::unavailable)?;
        let seq: Option<i64> = row.try_get("seq").map_err(Error::unavailable)?;
        inserted.insert(id, (xid.unwrap_or_default(), seq.unwrap_or_default()));
    }
    if inserted.len() != rows.len() {
        return Err(Error::Corrupt(format!(
            "inserted {} events of {}",
            inserted.len(),
            rows.len()
        )));
    }
    let mut previous = 0;
    for row in rows {
        let id = row.event.id;
        let (xid, seq) = inserted
            .get(&id.as_uuid())
            .ok_or_else(|| Error::Corrupt(format!("event {id} was not inserted")))?;
        // Batches must be contiguous and in revision order in `$all`; this guards the
        // evaluation order `WRITE` relies on.
        if *seq <= previous {
            return Err(Error::Corrupt(format!(
                "sequence values out of batch order ({previous} then {seq})"
            )));
        }
        previous = *seq;
        if let Some(stored) = known.get_mut(&id) {
            stored.position = Some(Position::new(
                parse_xid(xid)?,
                stored_u64(*seq, "sequence value")?,
            ));
        }
    }
    Ok(())
}

/// The result of looking a batch's ids up.
enum Retry {
    /// None of the ids is stored.
    None,
    /// Every id is stored in this stream, consecutively, in order, at a place consistent with
    /// the expectation: this is a retry of an append that succeeded.
    Original(Output),
    /// Some ids are stored, but not as this batch: this id is the first of them.
    Conflict(EventId),
}

fn find_retry(
    known: &Known,
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[NewEvent],
) -> Retry {
    let mut found = Vec::with_capacity(events.len());
    let mut missing = false;
    for event in events {
        match known.get(&event.id) {
            Some(stored) => found.push((event.id, stored)),
            None => missing = true,
        }
    }
    let Some(&(first_id, first)) = found.first() else {
        return Retry::None;
    };
    let in_place = !missing
        && found
            .iter()
            .zip(first.revision..)
            .all(|((_, stored), wanted)| {
                stored.stream == stream.as_str() && stored.revision == wanted
            })
        && match expected {
            ExpectedRevision::Exact(revision) => revision.checked_add(1) == Some(first.revision),
            _ => true,
        };
    match found.last() {
        Some(&(last, stored)) if in_place => Retry::Original(Output::Appended {
            revision: stored.revision,
            last,
        }),
        _ => Retry::Conflict(first_id),
    }
}

fn decide_append<'a>(
    state: &mut StreamState,
    stream: &'a StreamName,
    expected: ExpectedRevision,
    events: &'a [NewEvent],
    known: &mut Known,
    rows: &mut Vec<NewRow<'a>>,
) -> Result<Output> {
    if state.tombstoned {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let actual = state.current();
    let conflict = |event_id| Error::IdempotencyConflict {
        stream: stream.clone(),
        event_id,
    };
    if !expected.matches(actual) {
        let wrong = Error::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        };
        // A retry of an append that succeeded finds the stream moved on; recognise it before
        // calling it a conflict. A retry's first id is stored, which settles the common case.
        if !events.first().is_some_and(|e| known.contains_key(&e.id)) {
            return Err(wrong);
        }
        return match find_retry(known, stream, expected, events) {
            Retry::Original(output) => Ok(output),
            Retry::Conflict(event_id) => Err(conflict(event_id)),
            Retry::None => Err(wrong),
        };
    }
    match find_retry(known, stream, expected, events) {
        Retry::None => {}
        Retry::Original(output) => return Ok(output),
        Retry::Conflict(event_id) => return Err(conflict(event_id)),
    }
    let first = state.last_revision.map_or(0, |r| r + 1);
    let mut last = None;
    for (event, revision) in events.iter().zip(first..) {
        rows.push(NewRow {
            stream: stream.as_str(),
            revision,
            event,
        });
        known.insert(
            event.id,
            Stored {
                stream: stream.as_str().to_owned(),
                revision,
                position: None,
            },
        );
        last = Some((event.id, revision));
    }
    let Some((last, revision)) = last else {
        return Err(Error::EmptyAppend);
    };
    state.last_revision = Some(revision);
    state.deleted = false;
    state.changed = true;
    Ok(Output::Appended { revision, last })
}

fn decide_delete(
    state: &mut StreamState,
    stream: &StreamName,
    expected: ExpectedRevision,
    tombstone: bool,
) -> Result<()> {
    if state.tombstoned {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let actual = state.current();
    if !expected.matches(actual) {
        return Err(Error::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        });
    }
    match (tombstone, actual) {
        (true, _) => {
            state.tombstoned = true;
            state.deleted = true;
            state.changed = true;
        }
        (false, CurrentRevision::Current(last)) => {
            state.deleted = true;
            state.deleted_before = last.saturating_add(1);
            state.changed = true;
        }
        // Soft-deleting a stream that has no events changes nothing.
        (false, CurrentRevision::NoStream) => {}
    }
    Ok(())
}

fn decide_metadata(
    state: &mut StreamState,
    stream: &StreamName,
    expected: ExpectedRevision,
    json: &str,
) -> Result<u64> {
    if state.tombstoned {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let actual = state
        .metadata_revision
        .map_or(CurrentRevision::NoStream, CurrentRevision::Current);
    if !expected.matches(actual) {
        return Err(Error::WrongExpectedVersion {
            stream: stream.metadata_stream(),
            expected,
            actual,
        });
    }
    let next = state.metadata_revision.map_or(0, |r| r + 1);
    state.metadata = Some(json.to_owned());
    state.metadata_revision = Some(next);
    state.changed = true;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState::default()
    }

    fn name(s: &str) -> StreamName {
        StreamName::parse(s).expect("valid name")
    }

    #[test]
    fn a_group_decides_each_command_on_the_state_the_previous_ones_left() {
        let s = name("s-1");
        let mut stream = state();
        let mut known = Known::new();
        let mut rows = Vec::new();
        let first = vec![NewEvent::json("t", "{}"), NewEvent::json("t", "{}")];
        let second = vec![NewEvent::json("t", "{}")];
        let a = decide_append(
            &mut stream,
            &s,
            ExpectedRevision::NoStream,
            &first,
            &mut known,
            &mut rows,
        );
        assert!(matches!(a, Ok(Output::Appended { revision: 1, .. })));
        // The same batch again within the group is a retry, answered without new rows.
        let retry = decide_append(
            &mut stream,
            &s,
            ExpectedRevision::NoStream,
            &first,
            &mut known,
            &mut rows,
        );
        assert!(matches!(retry, Ok(Output::Appended { revision: 1, .. })));
        let refused = decide_append(
            &mut stream,
            &s,
            ExpectedRevision::Exact(0),
            &second,
            &mut known,
            &mut rows,
        );
        assert!(matches!(
            refused,
            Err(Error::WrongExpectedVersion {
                actual: CurrentRevision::Current(1),
                ..
            })
        ));
        decide_delete(&mut stream, &s, ExpectedRevision::Exact(1), false).expect("delete");
        let recreated = decide_append(
            &mut stream,
            &s,
            ExpectedRevision::NoStream,
            &second,
            &mut known,
            &mut rows,
        );
        assert!(matches!(
            recreated,
            Ok(Output::Appended { revision: 2, .. })
        ));
        assert_eq!(
            rows.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!((stream.deleted, stream.deleted_before), (false, 2));
    }

    #[test]
    fn streams_are_routed_to_the_same_writer_every_time() {
        let s = name("lesson-42");
        let writer = route(&s, 4);
        assert!(writer < 4);
        assert!((0..10).all(|_| route(&s, 4) == writer));
        assert_eq!(route(&s, 1), 0);
    }
}
