//! The runtime's bookkeeping rows: which generation of a projection is live, how far each
//! generation has got, and the events it parked. Every function here runs inside the caller's
//! transaction, so rows and checkpoint commit together.

use chrono::{DateTime, Utc};
use repit_event_store::{ContentType, Position, RecordedEvent};
use sqlx::{AnyConnection, Row};

use crate::db::{Dialect, ReadModelDb};
use crate::projection::{Projection, TableDef};

/// The live generation of a projection and its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Active {
    pub(crate) generation: i64,
    pub(crate) schema_version: i64,
    pub(crate) checkpoint: Option<Position>,
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn to_i64(value: u64, what: &str) -> Result<i64, sqlx::Error> {
    i64::try_from(value).map_err(|_| sqlx::Error::Protocol(format!("{what} {value} exceeds i64")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, sqlx::Error> {
    u64::try_from(value).map_err(|_| sqlx::Error::Protocol(format!("{what} {value} is negative")))
}

/// Reads (or, the first time, creates) the live generation of `projection`: generation 1 with
/// its tables and views and an empty checkpoint.
pub(crate) async fn ensure_active(
    db: &ReadModelDb,
    projection: &dyn Projection,
) -> Result<Active, sqlx::Error> {
    let name = projection.name();
    let mut tx = db.begin_write().await?;
    if db.dialect() == Dialect::Postgres {
        // Two processes starting the same projection at once must not both create tables.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    let row =
        sqlx::query("SELECT generation, schema_version FROM projection_active WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let (generation, schema_version) = match row {
        Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?),
        None => {
            let generation = 1;
            create_generation(&mut tx, db.dialect(), projection, generation).await?;
            publish_views(&mut tx, projection.tables(), generation).await?;
            sqlx::query(
                "INSERT INTO projection_active (name, generation, schema_version, swapped_at_us)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(name)
            .bind(generation)
            .bind(projection.schema_version())
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await?;
            (generation, projection.schema_version())
        }
    };
    let checkpoint = load_checkpoint(&mut tx, name, generation).await?;
    tx.commit().await?;
    Ok(Active {
        generation,
        schema_version,
        checkpoint,
    })
}

/// Creates the physical tables of `generation` (dropping leftovers of an abandoned rebuild) and
/// a fresh checkpoint row for it.
pub(crate) async fn create_generation(
    conn: &mut AnyConnection,
    dialect: Dialect,
    projection: &dyn Projection,
    generation: i64,
) -> Result<(), sqlx::Error> {
    for table in projection.tables() {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}",
            table.physical(generation)
        ))
        .execute(&mut *conn)
        .await?;
        for statement in table.statements(dialect, generation) {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    let name = projection.name();
    for statement in [
        "DELETE FROM projection_checkpoints WHERE name = $1 AND generation = $2",
        "DELETE FROM projection_parked WHERE name = $1 AND generation = $2",
    ] {
        sqlx::query(statement)
            .bind(name)
            .bind(generation)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO projection_checkpoints
            (name, generation, events_applied, events_parked, updated_at_us)
         VALUES ($1, $2, 0, 0, $3)",
    )
    .bind(name)
    .bind(generation)
    .bind(micros(Utc::now()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Points each table's stable name (a view) at the physical table of `generation`.
pub(crate) async fn publish_views(
    conn: &mut AnyConnection,
    tables: &[TableDef],
    generation: i64,
) -> Result<(), sqlx::Error> {
    for table in tables {
        for statement in Dialect::replace_view(table.name, &table.physical(generation)) {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Drops the physical tables of `generation` (after a swap made another one live).
pub(crate) async fn drop_generation(
    conn: &mut AnyConnection,
    projection: &dyn Projection,
    generation: i64,
) -> Result<(), sqlx::Error> {
    for table in projection.tables() {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}",
            table.physical(generation)
        ))
        .execute(&mut *conn)
        .await?;
    }
    for statement in [
        "DELETE FROM projection_checkpoints WHERE name = $1 AND generation = $2",
        "DELETE FROM projection_parked WHERE name = $1 AND generation = $2",
    ] {
        sqlx::query(statement)
            .bind(projection.name())
            .bind(generation)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The checkpoint of one generation.
pub(crate) async fn load_checkpoint(
    conn: &mut AnyConnection,
    name: &str,
    generation: i64,
) -> Result<Option<Position>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT commit_position, prepare_position FROM projection_checkpoints
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let commit: Option<i64> = row.try_get(0)?;
    let prepare: Option<i64> = row.try_get(1)?;
    match (commit, prepare) {
        (Some(commit), Some(prepare)) => Ok(Some(Position::new(
            to_u64(commit, "commit position")?,
            to_u64(prepare, "prepare position")?,
        ))),
        _ => Ok(None),
    }
}

/// Locks the live-generation row for the rest of the transaction and says whether `generation`
/// is still the live one. Taken first in every live batch, so a concurrent swap and a batch
/// serialise: the batch either commits before the swap or sees the new generation and stops.
pub(crate) async fn hold_generation(
    conn: &mut AnyConnection,
    name: &str,
    generation: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE projection_active SET swapped_at_us = swapped_at_us
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation)
    .execute(&mut *conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// What a committed batch did, for the checkpoint row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    pub(crate) position: Position,
    pub(crate) applied: u64,
    pub(crate) parked: u64,
    pub(crate) last_event_at: Option<DateTime<Utc>>,
}

/// Moves the checkpoint from `from` (where the caller's batch started) forward. Returns false
/// (and changes nothing) when the stored checkpoint is no longer `from`, or is already at or past
/// `progress.position`: another runner applied some of these events, so the caller rolls back
/// instead of applying them twice.
pub(crate) async fn advance(
    conn: &mut AnyConnection,
    name: &str,
    generation: i64,
    from: Option<Position>,
    progress: Progress,
) -> Result<bool, sqlx::Error> {
    let now = Utc::now();
    let commit = to_i64(progress.position.commit(), "commit position")?;
    let prepare = to_i64(progress.position.prepare(), "prepare position")?;
    // -1 stands for "no checkpoint yet" (positions are never negative).
    let (from_commit, from_prepare) = match from {
        Some(from) => (
            to_i64(from.commit(), "commit position")?,
            to_i64(from.prepare(), "prepare position")?,
        ),
        None => (-1, -1),
    };
    let lag = progress.last_event_at.map(|at| micros(now) - micros(at));
    let updated = sqlx::query(
        "UPDATE projection_checkpoints SET
            commit_position = $3, prepare_position = $4,
            events_applied = events_applied + $5, events_parked = events_parked + $6,
            last_event_at_us = COALESCE($7, last_event_at_us), lag_us = COALESCE($8, lag_us),
            updated_at_us = $9
         WHERE name = $1 AND generation = $2
           AND COALESCE(commit_position, -1) = $10 AND COALESCE(prepare_position, -1) = $11
           AND (commit_position IS NULL OR commit_position < $3
                OR (commit_position = $3 AND prepare_position < $4))",
    )
    .bind(name)
    .bind(generation)
    .bind(commit)
    .bind(prepare)
    .bind(to_i64(progress.applied, "count")?)
    .bind(to_i64(progress.parked, "count")?)
    .bind(progress.last_event_at.map(micros))
    .bind(lag)
    .bind(micros(now))
    .bind(from_commit)
    .bind(from_prepare)
    .execute(&mut *conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records a poison event with its error, so it can be listed and retried.
pub(crate) async fn park(
    conn: &mut AnyConnection,
    name: &str,
    generation: i64,
    event: &RecordedEvent,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_parked
            (name, generation, event_id, stream, revision, commit_position, prepare_position,
             event_type, content_type, data, metadata, created_us, error, attempts, parked_at_us)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14)
         ON CONFLICT (name, generation, event_id) DO UPDATE SET
            error = excluded.error, attempts = projection_parked.attempts + 1,
            parked_at_us = excluded.parked_at_us",
    )
    .bind(name)
    .bind(generation)
    .bind(event.id.to_string())
    .bind(event.stream.as_str().to_owned())
    .bind(to_i64(event.revision, "revision")?)
    .bind(to_i64(event.position.commit(), "commit position")?)
    .bind(to_i64(event.position.prepare(), "prepare position")?)
    .bind(event.event_type.clone())
    .bind(if event.content_type.is_json() {
        "json"
    } else {
        "protobuf"
    })
    .bind(event.data.to_vec())
    .bind(event.metadata.to_vec())
    .bind(micros(event.created))
    .bind(error.to_owned())
    .bind(micros(Utc::now()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rebuilds a parked row into the event it was.
pub(crate) fn parked_event(row: &sqlx::any::AnyRow) -> Result<RecordedEvent, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Protocol(format!("parked event has a bad {what}"));
    let id: String = row.try_get("event_id")?;
    let stream: String = row.try_get("stream")?;
    let created: i64 = row.try_get("created_us")?;
    let content_type: String = row.try_get("content_type")?;
    Ok(RecordedEvent {
        stream: stream.parse().map_err(|_| bad("stream"))?,
        revision: to_u64(row.try_get("revision")?, "revision")?,
        position: Position::new(
            to_u64(row.try_get("commit_position")?, "commit position")?,
            to_u64(row.try_get("prepare_position")?, "prepare position")?,
        ),
        id: id.parse().map_err(|_| bad("event id"))?,
        event_type: row.try_get("event_type")?,
        content_type: if content_type == "json" {
            ContentType::Json
        } else {
            ContentType::Protobuf
        },
        data: row.try_get::<Vec<u8>, _>("data")?.into(),
        metadata: row.try_get::<Vec<u8>, _>("metadata")?.into(),
        created: DateTime::from_timestamp_micros(created).ok_or_else(|| bad("timestamp"))?,
    })
}
