//! What a read model (or a reactor) is to the runtime: a stable name, the events it wants, the
//! tables it owns, and how one event changes them.

use std::collections::HashMap;

use async_trait::async_trait;
use repit_event_store::RecordedEvent;
use sqlx::error::DatabaseError;
use sqlx::sqlite::SqliteError;
use sqlx::{Any, AnyConnection, Transaction};

use crate::db::Dialect;

/// One table of a read model. Analysts query it by `name` (a view); the rows live in a physical
/// table per generation (`<name>_g<generation>`), which is what lets a rebuild fill fresh tables
/// while the old ones keep serving, then swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableDef {
    /// The stable name: the view analysts and services query.
    pub name: &'static str,
    /// `CREATE TABLE` / `CREATE INDEX` statements. `{table}` stands for the physical table name
    /// (use it in index names too, so each generation's indexes are distinct) and `{blob}` for
    /// the dialect's byte type.
    pub ddl: &'static [&'static str],
}

impl TableDef {
    /// The physical table of `generation`.
    pub fn physical(&self, generation: i64) -> String {
        format!("{}_g{generation}", self.name)
    }

    pub(crate) fn statements(&self, dialect: Dialect, generation: i64) -> Vec<String> {
        let table = self.physical(generation);
        self.ddl
            .iter()
            .map(|ddl| {
                ddl.replace("{table}", &table)
                    .replace("{blob}", dialect.blob())
            })
            .collect()
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event cannot be applied however often it is tried (it does not decode, or breaks a
    /// constraint): it is parked with this message and the projection moves on.
    #[error("{0}")]
    Poison(String),
    /// A dependency failed (the database went away, a command timed out): the batch is retried
    /// after a pause, nothing is parked.
    #[error("transient failure: {0}")]
    Transient(String),
}

impl ApplyError {
    /// [`ApplyError::Poison`] with `error`'s message.
    pub fn poison(error: impl std::fmt::Display) -> Self {
        Self::Poison(error.to_string())
    }
}

/// A `u64` (a stream revision, a `$all` position) as a BIGINT column; Poison beyond `i64`.
pub fn bigint(value: u64) -> Result<i64, ApplyError> {
    i64::try_from(value).map_err(|_| ApplyError::Poison(format!("{value} exceeds i64")))
}

/// A protobuf enum value as analysts read it in a column: `ROLE_TUTOR` with prefix `ROLE_` →
/// `tutor`.
pub fn enum_column(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

/// What to do with an event of revision `event` for a row folded up to revision `stored`, in a
/// read model folded stream by stream (each row built from its stream's events in order).
///
/// Equal: it was folded already (a redelivery) — skip it. Lower: the row has moved past it
/// without it — the event was parked and later events were folded on top — and folding it now
/// would be out of order: it stays parked (Poison) until a rebuild folds the stream in order.
/// Higher: fold it.
pub fn fold_order(stored: i64, event: u64) -> Result<bool, ApplyError> {
    let event = bigint(event)?;
    match stored.cmp(&event) {
        std::cmp::Ordering::Less => Ok(true),
        std::cmp::Ordering::Equal => Ok(false),
        std::cmp::Ordering::Greater => Err(ApplyError::Poison(format!(
            "the row is at revision {stored}, past this event's {event}, which it never folded: \
             rebuild the projection to fold its stream in order"
        ))),
    }
}

/// Whether the database refused a statement only for now: a lock it could not get in time, a
/// serialization failure or deadlock, a connection or server going away.
fn is_transient(error: &dyn DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    if error.try_downcast_ref::<SqliteError>().is_some() {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        return code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
    }
    // PostgreSQL SQLSTATE classes: connection exception (08), transaction rollback (40:
    // serialization failure, deadlock), insufficient resources (53), operator intervention (57:
    // cancelled, shutting down), system error (58); and lock not available (55P03).
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58")) || code == "55P03"
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(ref database) if is_transient(database.as_ref()) => {
                Self::Transient(error.to_string())
            }
            // The statement reached the database and was refused: trying again will not help.
            sqlx::Error::Database(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnNotFound(_) => Self::Poison(error.to_string()),
            other => Self::Transient(other.to_string()),
        }
    }
}

/// The transaction one batch of events is applied in, with the names of this generation's
/// tables. The runtime writes the checkpoint in the same transaction before committing.
#[derive(Debug)]
pub struct ProjectionTx {
    pub(crate) tx: Transaction<'static, Any>,
    pub(crate) tables: HashMap<&'static str, String>,
    pub(crate) dialect: Dialect,
}

impl ProjectionTx {
    /// The physical name of the table the projection declared as `name`.
    ///
    /// # Panics
    /// When `name` is not one of the projection's [`TableDef`]s: a programming error that every
    /// test of the projection hits at once.
    #[allow(clippy::panic)] // see "Panics": a typo in a table name is a bug, not a runtime state
    pub fn table(&self, name: &str) -> &str {
        match self.tables.get(name) {
            Some(table) => table,
            None => panic!("projection declares no table named {name}"),
        }
    }

    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// The SQL engine.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// A read model or a reactor, run by [`crate::Runtime`].
///
/// `apply` must be idempotent with respect to the rows it writes (upserts keyed by ids), because
/// a parked event may be retried later; ordinary redelivery never reaches it, since the runtime
/// skips events at or below the checkpoint it committed with the rows.
///
/// A reactor is a projection with no tables whose `apply` sends commands: it derives the ids of
/// the events its commands append from the source event id, so a replay changes nothing.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The permanent name: it names the checkpoint, the JetStream consumer and the tables'
    /// generations. Never rename a projection; add a new one.
    fn name(&self) -> &'static str;

    /// Bumped whenever the tables or the meaning of the rows change; a projection whose stored
    /// version differs is rebuilt from position 0 when the runtime starts.
    fn schema_version(&self) -> i64 {
        1
    }

    /// Event type prefixes this projection consumes (`repit.lesson.v1.`).
    fn event_types(&self) -> Vec<String>;

    /// The tables it owns (none for a reactor).
    fn tables(&self) -> &'static [TableDef];

    /// Applies one event inside the batch's transaction.
    async fn apply(&self, tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_folded_in_order_and_an_event_the_row_passed_stays_parked() {
        assert!(matches!(fold_order(3, 4), Ok(true)), "the next event folds");
        assert!(
            matches!(fold_order(4, 4), Ok(false)),
            "a redelivery is skipped"
        );
        assert!(
            matches!(fold_order(6, 4), Err(ApplyError::Poison(message)) if message.contains("rebuild")),
            "an event the row moved past without is not folded out of order"
        );
    }
}
