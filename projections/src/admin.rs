//! What operators ask of the runtime: each projection's status and lag, the events it parked,
//! and retrying them (`repitd projections …`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use repit_event_store::{Position, RecordedEvent};
use sqlx::Row;

use crate::checkpoint::{self, parked_event};
use crate::db::ReadModelDb;
use crate::projection::{ApplyError, Projection, ProjectionTx};

/// The live generation of one projection, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The live generation (its tables are `<table>_g<generation>`).
    pub generation: i64,
    /// The last position applied, if any.
    pub checkpoint: Option<Position>,
    /// Events applied into this generation.
    pub events_applied: u64,
    /// Events parked in this generation.
    pub events_parked: u64,
    /// When the last applied event was written to the store.
    pub last_event_at: Option<DateTime<Utc>>,
    /// From that event's write to its rows' commit, for the last batch: the projection's lag.
    pub lag_ms: Option<f64>,
    /// When the checkpoint last moved.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A parked event and why it was parked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The event as stored.
    pub event: RecordedEvent,
    /// The error `apply` gave last time.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u64,
}

fn from_micros(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.and_then(DateTime::from_timestamp_micros)
}

/// The status of every projection that has run against `db`.
pub async fn status(db: &ReadModelDb) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.name, a.generation, c.commit_position, c.prepare_position, c.events_applied,
                c.events_parked, c.last_event_at_us, c.lag_us, c.updated_at_us
         FROM projection_active a
         LEFT JOIN projection_checkpoints c ON c.name = a.name AND c.generation = a.generation
         ORDER BY a.name",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let commit: Option<i64> = row.try_get(2)?;
            let prepare: Option<i64> = row.try_get(3)?;
            let count = |i: usize| -> Result<u64, sqlx::Error> {
                Ok(row
                    .try_get::<Option<i64>, _>(i)?
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0))
            };
            Ok(ProjectionStatus {
                name: row.try_get(0)?,
                generation: row.try_get(1)?,
                checkpoint: match (commit, prepare) {
                    (Some(c), Some(p)) => Some(Position::new(
                        u64::try_from(c).unwrap_or(0),
                        u64::try_from(p).unwrap_or(0),
                    )),
                    _ => None,
                },
                events_applied: count(4)?,
                events_parked: count(5)?,
                last_event_at: from_micros(row.try_get(6)?),
                lag_ms: row
                    .try_get::<Option<i64>, _>(7)?
                    .map(|us| us as f64 / 1000.0),
                updated_at: from_micros(row.try_get(8)?),
            })
        })
        .collect()
}

/// The status of one projection, if it has run.
pub async fn status_of(
    db: &ReadModelDb,
    name: &str,
) -> Result<Option<ProjectionStatus>, sqlx::Error> {
    Ok(status(db).await?.into_iter().find(|s| s.name == name))
}

/// The events `name` parked in its live generation, oldest first.
pub async fn parked(db: &ReadModelDb, name: &str) -> Result<Vec<ParkedEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.* FROM projection_parked p
         JOIN projection_active a ON a.name = p.name AND a.generation = p.generation
         WHERE p.name = $1
         ORDER BY p.commit_position, p.prepare_position",
    )
    .bind(name)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ParkedEvent {
                event: parked_event(row)?,
                error: row.try_get("error")?,
                attempts: u64::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
            })
        })
        .collect()
}

/// What a retry of parked events did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Events that applied and left the parking lot.
    pub applied: Vec<String>,
    /// Events that failed again, with their new error.
    pub failed: Vec<(String, String)>,
}

/// Applies the parked events of `projection` again (all, or only `event_id`), each in its own
/// transaction: one that applies leaves the parking lot, one that fails stays with its new error.
/// Parked events are applied after the events that followed them, so projections keep `apply`
/// idempotent and order-tolerant for the rows a retry can touch.
pub async fn retry_parked(
    db: &ReadModelDb,
    projection: &dyn Projection,
    event_id: Option<&str>,
) -> Result<RetryReport, sqlx::Error> {
    let name = projection.name();
    let active = checkpoint::ensure_active(db, projection).await?;
    let tables: HashMap<&'static str, String> = projection
        .tables()
        .iter()
        .map(|t| (t.name, t.physical(active.generation)))
        .collect();
    let mut report = RetryReport::default();
    for parked in parked(db, name).await? {
        let id = parked.event.id.to_string();
        if event_id.is_some_and(|wanted| wanted != id) {
            continue;
        }
        let mut tx = ProjectionTx {
            tx: db.begin_write().await?,
            tables: tables.clone(),
            dialect: db.dialect(),
        };
        match projection.apply(&mut tx, &parked.event).await {
            Ok(()) => {
                for statement in [
                    "DELETE FROM projection_parked WHERE name = $1 AND generation = $2 AND event_id = $3",
                    "UPDATE projection_checkpoints SET events_applied = events_applied + 1,
                         events_parked = events_parked - 1 WHERE name = $1 AND generation = $2 AND $3 <> ''",
                ] {
                    sqlx::query(statement)
                        .bind(name)
                        .bind(active.generation)
                        .bind(&id)
                        .execute(tx.conn())
                        .await?;
                }
                tx.tx.commit().await?;
                report.applied.push(id);
            }
            Err(error) => {
                tx.tx.rollback().await?;
                let message = match error {
                    ApplyError::Poison(m) | ApplyError::Transient(m) => m,
                };
                let mut conn = db.pool().acquire().await?;
                checkpoint::park(&mut conn, name, active.generation, &parked.event, &message)
                    .await?;
                report.failed.push((id, message));
            }
        }
    }
    Ok(report)
}
