//! The database read models live in: SQLite (embedded) or PostgreSQL (the tables analysts query).
//!
//! One projection definition serves both through sqlx's `Any` driver: projections write portable
//! SQL (`$1` parameters, `INSERT … ON CONFLICT … DO UPDATE`, BIGINT microseconds for instants,
//! TEXT ids), and the few spots where the dialects differ go through [`Dialect`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Executor, Transaction};

/// Which SQL engine a [`ReadModelDb`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (one file, WAL).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The column type for raw bytes.
    pub fn blob(self) -> &'static str {
        match self {
            Self::Sqlite => "BLOB",
            Self::Postgres => "BYTEA",
        }
    }

    /// `CREATE VIEW` that replaces an existing view of the same name.
    ///
    /// DROP + CREATE on both engines: SQLite has no `CREATE OR REPLACE VIEW`, and PostgreSQL's
    /// refuses a new generation whose columns differ.
    pub(crate) fn replace_view(view: &str, table: &str) -> [String; 2] {
        [
            format!("DROP VIEW IF EXISTS {view}"),
            format!("CREATE VIEW {view} AS SELECT * FROM {table}"),
        ]
    }
}

/// Why the read-model database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names neither `sqlite:` nor `postgres:`.
    #[error("read model url must start with sqlite: or postgres:, got {0:?}")]
    UnsupportedUrl(String),
    /// The database refused or failed.
    #[error("read model database: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Whether a query failed because the read-model database could not be reached (UNAVAILABLE to
/// a caller), not because of the query.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

/// A pool on the read-model database, with the runtime's own bookkeeping tables in place.
#[derive(Clone, Debug)]
pub struct ReadModelDb {
    pool: AnyPool,
    dialect: Dialect,
}

/// Serialises bookkeeping DDL between processes starting at once (PostgreSQL's
/// `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent twin).
const MIGRATION_LOCK: i64 = 0x5245_5049_5450_524f; // "REPITPRO"

impl ReadModelDb {
    /// Connects to `url` (`sqlite://path?mode=rwc`, `sqlite::memory:`, `postgres://…`) and
    /// creates the runtime's tables if they are missing.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        install_default_drivers();
        let dialect: Dialect = url.parse()?;
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match dialect {
            Dialect::Sqlite => {
                // WAL lets the services read while projections write; the busy timeout makes
                // concurrent writers (several projections, a rebuild) wait instead of failing.
                let in_memory = url.contains(":memory:");
                options
                    .max_connections(if in_memory { 1 } else { 8 })
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Dialect::Postgres => {
                options
                    .max_connections(16)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // A read model's rows and its checkpoint commit in one transaction, so
                            // a crash that loses the last commits loses both together and the
                            // feed delivers those events again: waiting for each WAL flush buys
                            // nothing here. (The event store keeps synchronous commits.)
                            conn.execute("SET synchronous_commit = off").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
        };
        let db = Self { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    /// The connection pool, for queries against the read models.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The SQL engine behind the pool.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`, waiting out the busy timeout): a deferred transaction whose first statement
    /// reads cannot become a writer once another connection has committed meanwhile, and fails
    /// with "database is locked" however long the timeout — which a projection's
    /// read-then-write `apply` would otherwise hit whenever two writers overlap.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let blob = self.dialect.blob();
        let statements = [
            "CREATE TABLE IF NOT EXISTS projection_active (
                name TEXT PRIMARY KEY,
                generation BIGINT NOT NULL,
                schema_version BIGINT NOT NULL,
                swapped_at_us BIGINT NOT NULL
            )"
            .to_owned(),
            "CREATE TABLE IF NOT EXISTS projection_checkpoints (
                name TEXT NOT NULL,
                generation BIGINT NOT NULL,
                commit_position BIGINT,
                prepare_position BIGINT,
                events_applied BIGINT NOT NULL,
                events_parked BIGINT NOT NULL,
                last_event_at_us BIGINT,
                lag_us BIGINT,
                updated_at_us BIGINT NOT NULL,
                PRIMARY KEY (name, generation)
            )"
            .to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS projection_parked (
                    name TEXT NOT NULL,
                    generation BIGINT NOT NULL,
                    event_id TEXT NOT NULL,
                    stream TEXT NOT NULL,
                    revision BIGINT NOT NULL,
                    commit_position BIGINT NOT NULL,
                    prepare_position BIGINT NOT NULL,
                    event_type TEXT NOT NULL,
                    content_type TEXT NOT NULL,
                    data {blob} NOT NULL,
                    metadata {blob} NOT NULL,
                    created_us BIGINT NOT NULL,
                    error TEXT NOT NULL,
                    attempts BIGINT NOT NULL,
                    parked_at_us BIGINT NOT NULL,
                    PRIMARY KEY (name, generation, event_id)
                )"
            ),
        ];
        for statement in statements {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl FromStr for Dialect {
    type Err = DbError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(url.to_owned()))
        }
    }
}
