//! The single writer: one connection, one task, group commit.
//!
//! SQLite admits one writer at a time. Rather than let every append race for the database lock
//! (and sleep in `busy_timeout`), appends queue on a channel to one task that owns the write
//! connection. The task takes everything queued, runs it in one transaction with a savepoint per
//! command (so each command is still all-or-nothing), commits once, then answers and wakes
//! subscribers. With `synchronous = FULL` that turns N fsyncs into one under load.

use chrono::Utc;
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::read::{content_type_code, head, position, to_i64};
use crate::error::{Error, Result};
use crate::model::{
    AppendResult, CurrentRevision, EventId, ExpectedRevision, NewEvent, StreamName,
};

/// The most commands in one transaction, so one group cannot hold the lock for long.
const MAX_GROUP: usize = 256;

/// The most event bytes in one transaction, for the same reason.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// How long a held append (conformance suite only) may stay open before it commits anyway, so a
/// broken test cannot wedge the writer.
#[cfg(feature = "conformance")]
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// A request to the writer task. Batches are validated before they get here.
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
    /// An append that stays uncommitted until `release` fires: the conformance suite's way to
    /// hold a write transaction open while other writers queue.
    #[cfg(feature = "conformance")]
    Hold {
        stream: StreamName,
        events: Vec<NewEvent>,
        started: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
}

impl Command {
    fn size(&self) -> usize {
        match self {
            Self::Append { events, .. } => events.iter().map(NewEvent::size).sum(),
            #[cfg(feature = "conformance")]
            Self::Hold { events, .. } => events.iter().map(NewEvent::size).sum(),
            Self::Delete { .. } | Self::SetMetadata { .. } => 0,
        }
    }
}

/// A command's outcome, sent only once the group's commit has succeeded or failed.
enum Done {
    Append(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Revision(oneshot::Sender<Result<u64>>, Result<u64>),
}

impl Done {
    /// Answers the caller. After a failed commit nothing of the group was written, so every
    /// caller gets `Unavailable`, whatever its command computed inside the transaction.
    fn send(self, commit_failure: Option<&str>) {
        let failed = |what: &str| Error::unavailable(format!("commit failed: {what}"));
        // A caller that stopped waiting (dropped its future) does not care about the answer.
        match self {
            Self::Append(reply, result) => {
                let _ = reply.send(commit_failure.map_or(result, |f| Err(failed(f))));
            }
            Self::Unit(reply, result) => {
                let _ = reply.send(commit_failure.map_or(result, |f| Err(failed(f))));
            }
            Self::Revision(reply, result) => {
                let _ = reply.send(commit_failure.map_or(result, |f| Err(failed(f))));
            }
        }
    }
}

/// Runs until every sender is gone (the store was dropped), then closes the connection.
pub(super) async fn run(
    mut conn: PoolConnection<Sqlite>,
    mut commands: mpsc::Receiver<Command>,
    head_tx: watch::Sender<u64>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = commands.recv().await {
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
        execute_group(&mut conn, group.drain(..), &head_tx).await;
    }
    // Closing explicitly (rather than returning it to its pool of one) lets SQLite checkpoint
    // the WAL now instead of whenever the pool is dropped.
    if let Err(error) = sqlx::Connection::close(conn.detach()).await {
        tracing::warn!(%error, "failed to close the event store's write connection");
    }
}

/// Why a command could not be finished inside the transaction.
enum Failure {
    /// An insert hit the unique index on event ids: maybe a retry, decided after rolling back.
    DuplicateId,
    /// An ordinary outcome (conflict, deleted stream) or a driver error.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Error(error)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Error(Error::unavailable(error))
    }
}

async fn exec(conn: &mut SqliteConnection, sql: &str) -> sqlx::Result<()> {
    sqlx::query(sql).execute(conn).await.map(drop)
}

async fn execute_group(
    conn: &mut SqliteConnection,
    group: impl Iterator<Item = Command>,
    head_tx: &watch::Sender<u64>,
) {
    let mut done = Vec::new();
    // Commands that arrive after a fatal error are answered as failed, never dropped.
    let mut fatal: Option<String> = None;
    let mut head = 0;
    // IMMEDIATE takes the write lock now, so the head read below cannot be overtaken by another
    // process writing to the same file.
    match exec(conn, "BEGIN IMMEDIATE").await {
        Ok(()) => match self::head(conn).await {
            Ok(h) => head = h,
            Err(error) => fatal = Some(error.to_string()),
        },
        Err(error) => fatal = Some(error.to_string()),
    }
    let start_head = head;
    for command in group {
        if let Some(reason) = &fatal {
            fail(command, reason);
            continue;
        }
        let outcome = match command {
            Command::Append {
                stream,
                expected,
                events,
                reply,
            } => {
                let step = Step::Append {
                    stream: &stream,
                    expected,
                    events: &events,
                };
                run_step(conn, &mut head, step)
                    .await
                    .map(|result| Done::Append(reply, result.and_then(Output::appended)))
            }
            Command::Delete {
                stream,
                expected,
                tombstone,
                reply,
            } => {
                let step = Step::Delete {
                    stream: &stream,
                    expected,
                    tombstone,
                };
                run_step(conn, &mut head, step)
                    .await
                    .map(|result| Done::Unit(reply, result.map(drop)))
            }
            Command::SetMetadata {
                stream,
                expected,
                json,
                reply,
            } => {
                let step = Step::SetMetadata {
                    stream: &stream,
                    expected,
                    json: &json,
                };
                run_step(conn, &mut head, step)
                    .await
                    .map(|result| Done::Revision(reply, result.and_then(Output::metadata_revision)))
            }
            #[cfg(feature = "conformance")]
            Command::Hold {
                stream,
                events,
                started,
                release,
                reply,
            } => {
                let step = Step::Append {
                    stream: &stream,
                    expected: ExpectedRevision::Any,
                    events: &events,
                };
                let outcome = run_step(conn, &mut head, step).await;
                let _ = started.send(());
                // Either outcome of the wait means "commit now": released, or held too long.
                let _ = tokio::time::timeout(MAX_HOLD, release).await;
                outcome.map(|result| Done::Append(reply, result.and_then(Output::appended)))
            }
        };
        match outcome {
            Ok(d) => done.push(d),
            Err(error) => fatal = Some(error.to_string()),
        }
    }
    let commit_failure = match fatal {
        Some(reason) => Some(reason),
        None => exec(conn, "COMMIT").await.err().map(|e| e.to_string()),
    };
    if let Some(reason) = &commit_failure {
        tracing::error!(reason, "event store write transaction failed");
        // The transaction may still be open (a failed COMMIT leaves it so); end it before the
        // next group, which otherwise could not BEGIN.
        if let Err(error) = exec(conn, "ROLLBACK").await {
            tracing::debug!(%error, "rollback after a failed write transaction");
        }
    }
    for d in done {
        d.send(commit_failure.as_deref());
    }
    if commit_failure.is_none() && head != start_head {
        // After COMMIT, so a subscriber woken by this value finds the events on disk.
        head_tx.send_replace(u64::try_from(head).unwrap_or_default());
    }
}

/// Answers a command that never ran because its group already failed; callers that stopped
/// waiting are ignored.
fn fail(command: Command, reason: &str) {
    let error = || Error::unavailable(format!("write transaction failed: {reason}"));
    match command {
        Command::Append { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::Delete { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::SetMetadata { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        #[cfg(feature = "conformance")]
        Command::Hold { reply, started, .. } => {
            let _ = started.send(());
            let _ = reply.send(Err(error()));
        }
    }
}

/// One command's work, borrowed from the command so a duplicate id can be diagnosed after the
/// savepoint is rolled back.
#[derive(Clone, Copy)]
enum Step<'a> {
    Append {
        stream: &'a StreamName,
        expected: ExpectedRevision,
        events: &'a [NewEvent],
    },
    Delete {
        stream: &'a StreamName,
        expected: ExpectedRevision,
        tombstone: bool,
    },
    SetMetadata {
        stream: &'a StreamName,
        expected: ExpectedRevision,
        json: &'a str,
    },
}

enum Output {
    Appended(AppendResult),
    Deleted,
    MetadataRevision(u64),
}

impl Output {
    fn appended(self) -> Result<AppendResult> {
        match self {
            Self::Appended(result) => Ok(result),
            Self::Deleted | Self::MetadataRevision(_) => Err(mismatch()),
        }
    }

    fn metadata_revision(self) -> Result<u64> {
        match self {
            Self::MetadataRevision(revision) => Ok(revision),
            Self::Appended(_) | Self::Deleted => Err(mismatch()),
        }
    }
}

fn mismatch() -> Error {
    Error::Corrupt("write step answered with the wrong kind of outcome".to_owned())
}

/// Runs one command inside a savepoint, so it is all-or-nothing while sharing the group's
/// transaction. The outer `Err` is a failure of the savepoint itself, which poisons the whole
/// group; the inner result is the command's own outcome.
async fn run_step(
    conn: &mut SqliteConnection,
    head: &mut i64,
    step: Step<'_>,
) -> sqlx::Result<Result<Output>> {
    exec(conn, "SAVEPOINT command").await?;
    let before = *head;
    let outcome = match step {
        Step::Append {
            stream,
            expected,
            events,
        } => append(conn, head, stream, expected, events)
            .await
            .map(Output::Appended),
        Step::Delete {
            stream,
            expected,
            tombstone,
        } => delete(conn, stream, expected, tombstone)
            .await
            .map(|()| Output::Deleted),
        Step::SetMetadata {
            stream,
            expected,
            json,
        } => set_metadata(conn, stream, expected, json)
            .await
            .map(Output::MetadataRevision),
    };
    if outcome.is_ok() {
        exec(conn, "RELEASE command").await?;
    } else {
        *head = before;
        exec(conn, "ROLLBACK TO command").await?;
        exec(conn, "RELEASE command").await?;
    }
    Ok(match (outcome, step) {
        (Ok(output), _) => Ok(output),
        (Err(Failure::Error(error)), _) => Err(error),
        // Diagnosed after the rollback, so the batch's own partial inserts are not mistaken
        // for earlier writes.
        (
            Err(Failure::DuplicateId),
            Step::Append {
                stream,
                expected,
                events,
            },
        ) => {
            match find_retry(conn, stream, expected, events).await {
                Ok(Retry::Original(result)) => Ok(Output::Appended(result)),
                Ok(Retry::Conflict(event_id)) => Err(Error::IdempotencyConflict {
                    stream: stream.clone(),
                    event_id,
                }),
                // The insert saw a duplicate the lookup cannot find: nothing else writes under
                // our lock, so report the batch's first id rather than guess.
                Ok(Retry::None) => Err(Error::IdempotencyConflict {
                    stream: stream.clone(),
                    event_id: events.first().map(|e| e.id).unwrap_or_default(),
                }),
                Err(error) => Err(error),
            }
        }
        (Err(Failure::DuplicateId), _) => Err(mismatch()),
    })
}

/// The write-side view of a stream row.
struct StreamRow {
    id: i64,
    last_revision: Option<u64>,
    deleted: bool,
    tombstoned: bool,
    metadata_revision: Option<u64>,
}

impl StreamRow {
    fn current(&self) -> CurrentRevision {
        match self.last_revision {
            Some(revision) if !self.deleted => CurrentRevision::Current(revision),
            _ => CurrentRevision::NoStream,
        }
    }
}

fn current(row: Option<&StreamRow>) -> CurrentRevision {
    row.map_or(CurrentRevision::NoStream, StreamRow::current)
}

async fn load_stream(
    conn: &mut SqliteConnection,
    stream: &StreamName,
) -> Result<Option<StreamRow>> {
    let row = sqlx::query(
        "SELECT stream_id, last_revision, deleted, tombstoned, metadata_revision \
         FROM streams WHERE name = ?",
    )
    .bind(stream.as_str())
    .fetch_optional(conn)
    .await
    .map_err(Error::unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let revision = |index: usize| -> Result<Option<u64>> {
        let value: Option<i64> = row.try_get(index).map_err(Error::unavailable)?;
        value
            .map(|v| u64::try_from(v).map_err(|_| Error::Corrupt(format!("negative revision {v}"))))
            .transpose()
    };
    Ok(Some(StreamRow {
        id: row.try_get(0).map_err(Error::unavailable)?,
        last_revision: revision(1)?,
        deleted: row.try_get(2).map_err(Error::unavailable)?,
        tombstoned: row.try_get(3).map_err(Error::unavailable)?,
        metadata_revision: revision(4)?,
    }))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

async fn append(
    conn: &mut SqliteConnection,
    head: &mut i64,
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[NewEvent],
) -> std::result::Result<AppendResult, Failure> {
    let row = load_stream(conn, stream).await?;
    if row.as_ref().is_some_and(|r| r.tombstoned) {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        }
        .into());
    }
    let actual = current(row.as_ref());
    if !expected.matches(actual) {
        let wrong = || Error::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        };
        // A retry of an append that succeeded finds the stream moved on; recognise it before
        // calling it a conflict. A retry's first id is stored, so one lookup settles the common
        // case without a query per event while holding the write lock.
        let Some(first) = events.first() else {
            return Err(wrong().into());
        };
        if lookup(conn, first.id).await?.is_none() {
            return Err(wrong().into());
        }
        return match find_retry(conn, stream, expected, events).await? {
            Retry::Original(result) => Ok(result),
            Retry::Conflict(event_id) => Err(Error::IdempotencyConflict {
                stream: stream.clone(),
                event_id,
            }
            .into()),
            Retry::None => Err(wrong().into()),
        };
    }
    let (stream_id, mut revision) = match &row {
        Some(row) => (row.id, row.last_revision.map_or(0, |r| r + 1)),
        None => {
            let id: i64 =
                sqlx::query_scalar("INSERT INTO streams (name) VALUES (?) RETURNING stream_id")
                    .bind(stream.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
            (id, 0)
        }
    };
    let created = Utc::now().timestamp_micros();
    for event in events {
        *head += 1;
        let inserted = sqlx::query(
            "INSERT INTO events (position, stream_id, revision, event_id, event_type, \
             content_type, data, metadata, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(*head)
        .bind(stream_id)
        .bind(to_i64(revision))
        .bind(event.id.as_uuid())
        .bind(event.event_type.as_str())
        .bind(content_type_code(event.content_type))
        .bind(event.data.as_ref())
        .bind(event.metadata.as_ref())
        .bind(created)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => revision += 1,
            // Positions and revisions are ours under the write lock, so a unique violation can
            // only be the event id.
            Err(error) if is_unique_violation(&error) => return Err(Failure::DuplicateId),
            Err(error) => return Err(error.into()),
        }
    }
    let last = revision - 1;
    sqlx::query("UPDATE streams SET last_revision = ?, deleted = 0 WHERE stream_id = ?")
        .bind(to_i64(last))
        .bind(stream_id)
        .execute(&mut *conn)
        .await?;
    Ok(AppendResult {
        next_expected_revision: last,
        position: position(*head)?,
    })
}

/// The result of looking a batch's ids up.
enum Retry {
    /// None of the ids is stored.
    None,
    /// Every id is stored in this stream, consecutively, in order, at a place consistent with
    /// the expectation: this is a retry of an append that succeeded.
    Original(AppendResult),
    /// Some ids are stored, but not as this batch: this id is the first of them.
    Conflict(EventId),
}

/// Where an event id is stored: stream name, revision, position.
async fn lookup(conn: &mut SqliteConnection, id: EventId) -> Result<Option<(String, i64, i64)>> {
    sqlx::query_as(
        "SELECT s.name, e.revision, e.position FROM events e \
         JOIN streams s ON s.stream_id = e.stream_id WHERE e.event_id = ?",
    )
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await
    .map_err(Error::unavailable)
}

async fn find_retry(
    conn: &mut SqliteConnection,
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[NewEvent],
) -> Result<Retry> {
    let mut found = Vec::with_capacity(events.len());
    let mut missing = false;
    for event in events {
        match lookup(conn, event.id).await? {
            Some((name, revision, position)) => found.push((event.id, name, revision, position)),
            None => missing = true,
        }
    }
    let Some((first_id, _, first_revision, _)) = found.first().cloned() else {
        return Ok(Retry::None);
    };
    let in_place = !missing
        && found
            .iter()
            .zip(first_revision..)
            .all(|((_, name, revision, _), wanted)| name == stream.as_str() && *revision == wanted)
        && match expected {
            ExpectedRevision::Exact(revision) => {
                to_i64(revision).checked_add(1) == Some(first_revision)
            }
            _ => true,
        };
    match found.last() {
        Some((_, _, revision, last_position)) if in_place => Ok(Retry::Original(AppendResult {
            next_expected_revision: u64::try_from(*revision)
                .map_err(|_| Error::Corrupt(format!("negative revision {revision}")))?,
            position: position(*last_position)?,
        })),
        _ => Ok(Retry::Conflict(first_id)),
    }
}

async fn delete(
    conn: &mut SqliteConnection,
    stream: &StreamName,
    expected: ExpectedRevision,
    tombstone: bool,
) -> std::result::Result<(), Failure> {
    let row = load_stream(conn, stream).await?;
    if row.as_ref().is_some_and(|r| r.tombstoned) {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        }
        .into());
    }
    let actual = current(row.as_ref());
    if !expected.matches(actual) {
        return Err(Error::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        }
        .into());
    }
    match (row, tombstone, actual) {
        (Some(row), true, _) => {
            sqlx::query("UPDATE streams SET tombstoned = 1, deleted = 1 WHERE stream_id = ?")
                .bind(row.id)
                .execute(&mut *conn)
                .await?;
        }
        (None, true, _) => {
            sqlx::query("INSERT INTO streams (name, tombstoned, deleted) VALUES (?, 1, 1)")
                .bind(stream.as_str())
                .execute(&mut *conn)
                .await?;
        }
        (Some(row), false, CurrentRevision::Current(last)) => {
            sqlx::query("UPDATE streams SET deleted = 1, deleted_before = ? WHERE stream_id = ?")
                .bind(to_i64(last).saturating_add(1))
                .bind(row.id)
                .execute(&mut *conn)
                .await?;
        }
        // Soft-deleting a stream that has no events changes nothing.
        (_, false, CurrentRevision::NoStream) | (None, false, _) => {}
    }
    Ok(())
}

async fn set_metadata(
    conn: &mut SqliteConnection,
    stream: &StreamName,
    expected: ExpectedRevision,
    json: &str,
) -> std::result::Result<u64, Failure> {
    let row = load_stream(conn, stream).await?;
    if row.as_ref().is_some_and(|r| r.tombstoned) {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        }
        .into());
    }
    let current_revision = row.as_ref().and_then(|r| r.metadata_revision);
    let actual = current_revision.map_or(CurrentRevision::NoStream, CurrentRevision::Current);
    if !expected.matches(actual) {
        let stream = stream.metadata_stream();
        return Err(Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        }
        .into());
    }
    let next = current_revision.map_or(0, |r| r + 1);
    sqlx::query(
        "INSERT INTO streams (name, metadata, metadata_revision) VALUES (?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET metadata = excluded.metadata, \
         metadata_revision = excluded.metadata_revision",
    )
    .bind(stream.as_str())
    .bind(json)
    .bind(to_i64(next))
    .execute(&mut *conn)
    .await?;
    Ok(next)
}
