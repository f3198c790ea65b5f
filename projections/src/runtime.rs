//! The runtime: one task per projection that pulls batches from its feed, applies them in one
//! transaction with the checkpoint, parks poison events, and swaps in rebuilt generations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use repit_event_store::{Position, RecordedEvent};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Progress};
use crate::db::ReadModelDb;
use crate::feed::{Batch, Feed, FeedError, FeedSource, FeedSpec};
use crate::projection::{ApplyError, Projection, ProjectionTx};

/// How often, at most, the checkpoint of a projection is written while only events it does not
/// want go by (each write is a commit; the reactor wants one event type in many).
const IDLE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Why the runtime (or one of its commands) stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The read-model database failed.
    #[error("read model database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The feed failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// A projection name that is not registered.
    #[error("no projection named {0:?}")]
    UnknownProjection(String),
    /// Shutdown began before the work was done.
    #[error("interrupted by shutdown")]
    Interrupted,
}

/// Tunables of the runtime.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeOptions {
    /// The most events applied in one transaction.
    pub batch_size: usize,
    /// The pause before a feed or database failure is retried.
    pub retry_pause: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 512,
            retry_pause: Duration::from_millis(500),
        }
    }
}

/// Runs a set of projections against one read-model database and one feed source.
#[derive(Clone)]
pub struct Runtime {
    db: ReadModelDb,
    source: FeedSource,
    projections: Vec<Arc<dyn Projection>>,
    options: RuntimeOptions,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        f.debug_struct("Runtime")
            .field("projections", &names)
            .field("source", &self.source)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How a batch ended.
enum Committed {
    /// Rows and checkpoint are in; the checkpoint is now `Position`.
    Advanced(Position),
    /// The generation is no longer live (a rebuild swapped), or another runner already applied
    /// these events: nothing was written; reload and resume.
    Stale,
}

/// Where [`Runtime::follow`] stopped.
struct Followed {
    /// The checkpoint reached.
    checkpoint: Option<Position>,
    /// It stopped because no batch came within the idle time it was given.
    quiet: bool,
}

/// Which checks a batch makes before writing, and when [`Runtime::follow`] stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The live generation: hold the live row so a swap cannot interleave.
    Live,
    /// A rebuild writing a generation that is not live yet: stop at the live end of the feed,
    /// or once `idle` passes without a batch.
    Rebuild { idle: Option<Duration> },
}

impl Runtime {
    /// A runtime over `db` reading from `source`, with no projections yet.
    pub fn new(db: ReadModelDb, source: FeedSource) -> Self {
        Self {
            db,
            source,
            projections: Vec::new(),
            options: RuntimeOptions::default(),
        }
    }

    /// Adds a projection (or reactor).
    #[must_use]
    pub fn with(mut self, projection: Arc<dyn Projection>) -> Self {
        self.projections.push(projection);
        self
    }

    /// Changes the tunables.
    #[must_use]
    pub fn options(mut self, options: RuntimeOptions) -> Self {
        self.options = options;
        self
    }

    /// The read-model database.
    pub fn db(&self) -> &ReadModelDb {
        &self.db
    }

    /// The registered projections' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    fn find(&self, name: &str) -> Result<Arc<dyn Projection>, RuntimeError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownProjection(name.to_owned()))
    }

    /// Creates every projection's tables and views if missing, so queries work before the
    /// first event arrives.
    pub async fn prepare(&self) -> Result<(), RuntimeError> {
        for projection in &self.projections {
            checkpoint::ensure_active(&self.db, projection.as_ref()).await?;
        }
        Ok(())
    }

    /// Runs every projection until `shutdown` fires. Failures of a feed or of the database are
    /// retried after a pause; they never stop the other projections.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for projection in &self.projections {
            let runtime = self.clone();
            let projection = projection.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { runtime.run_live(projection, shutdown).await });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "projection task panicked");
            }
        }
    }

    async fn pause(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.options.retry_pause) => true,
        }
    }

    async fn run_live(&self, projection: Arc<dyn Projection>, shutdown: CancellationToken) {
        let name = projection.name();
        while !shutdown.is_cancelled() {
            let active = match checkpoint::ensure_active(&self.db, projection.as_ref()).await {
                Ok(active) => active,
                Err(error) => {
                    tracing::warn!(projection = name, %error, "cannot load the checkpoint, retrying");
                    if !self.pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if active.schema_version != projection.schema_version() {
                tracing::info!(
                    projection = name,
                    stored = active.schema_version,
                    current = projection.schema_version(),
                    "schema changed, rebuilding"
                );
                if let Err(error) = self.rebuild_projection(&projection, &shutdown).await {
                    tracing::warn!(projection = name, %error, "rebuild failed, retrying");
                    if !self.pause(&shutdown).await {
                        return;
                    }
                }
                continue;
            }
            tracing::info!(projection = name, generation = active.generation, checkpoint = ?active.checkpoint, "projection starting");
            let spec = FeedSpec {
                name: format!("{name}_g{}", active.generation),
                event_type_prefixes: projection.event_types(),
                after: active.checkpoint,
                replay: false,
            };
            let mut feed = match self.source.open(&spec).await {
                Ok(feed) => feed,
                Err(error) => {
                    tracing::warn!(projection = name, %error, "cannot open the feed, retrying");
                    if !self.pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            match self
                .follow(
                    &projection,
                    feed.as_mut(),
                    active.generation,
                    active.checkpoint,
                    Mode::Live,
                    &shutdown,
                )
                .await
            {
                Ok(_) | Err(RuntimeError::Interrupted) => {}
                Err(error) => {
                    tracing::warn!(projection = name, %error, "projection interrupted, resuming from its checkpoint");
                    if !self.pause(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies batches from `feed` to `generation` until shutdown, a stale write (reload), or —
    /// in rebuild mode — the live end of the feed or its idle time without a batch. Returns the
    /// checkpoint reached.
    async fn follow(
        &self,
        projection: &Arc<dyn Projection>,
        feed: &mut dyn Feed,
        generation: i64,
        mut checkpoint: Option<Position>,
        mode: Mode,
        shutdown: &CancellationToken,
    ) -> Result<Followed, RuntimeError> {
        // `checkpoint` is what is stored (the commit guard compares against it); `seen` may be
        // ahead of it by batches that held nothing this projection wants, whose checkpoint is
        // written lazily: replaying them after a restart applies nothing.
        let mut seen = checkpoint;
        let mut last_commit = Instant::now();
        loop {
            // The batch cut short when this fires is not lost: the rebuild swaps (or fails) and
            // never reads this feed again.
            let quiet = async {
                match mode {
                    Mode::Rebuild { idle: Some(idle) } => tokio::time::sleep(idle).await,
                    _ => std::future::pending().await,
                }
            };
            // A lazily kept checkpoint is written once the interval has passed, even if no other
            // batch comes, so status and rebuilds see how far the projection really is.
            let deferred = seen.filter(|_| seen != checkpoint);
            let flush = async {
                match deferred {
                    Some(_) => {
                        tokio::time::sleep_until((last_commit + IDLE_CHECKPOINT_INTERVAL).into())
                            .await;
                    }
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                () = shutdown.cancelled() => return Err(RuntimeError::Interrupted),
                () = quiet => return Ok(Followed { checkpoint, quiet: true }),
                () = flush => {
                    let Some(position) = deferred else { continue };
                    match self
                        .commit(projection.as_ref(), generation, checkpoint, &[], position, mode)
                        .await?
                    {
                        Committed::Advanced(at) => {
                            checkpoint = Some(at);
                            seen = checkpoint;
                            last_commit = Instant::now();
                        }
                        Committed::Stale => return Ok(Followed { checkpoint, quiet: false }),
                    }
                    continue;
                }
                batch = feed.next_batch(self.options.batch_size) => batch?,
            };
            let Batch {
                ref events,
                position,
                caught_up,
                ..
            } = batch;
            // Redelivered or replayed events at or below the checkpoint are already in.
            let fresh: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| seen.is_none_or(|c| e.position > c))
                .collect();
            let position = position.filter(|p| seen.is_none_or(|c| *p > c));
            let lazy = fresh.is_empty()
                && mode == Mode::Live
                && last_commit.elapsed() < IDLE_CHECKPOINT_INTERVAL;
            if let (Some(position), true) = (position, lazy) {
                seen = Some(position);
            } else if let Some(position) = position {
                match self
                    .commit(
                        projection.as_ref(),
                        generation,
                        checkpoint,
                        &fresh,
                        position,
                        mode,
                    )
                    .await?
                {
                    Committed::Advanced(at) => {
                        checkpoint = Some(at);
                        seen = checkpoint;
                        last_commit = Instant::now();
                    }
                    Committed::Stale => {
                        return Ok(Followed {
                            checkpoint,
                            quiet: false,
                        });
                    }
                }
            }
            if let Err(error) = batch.ack().await {
                // Only means redelivery, which the checkpoint absorbs.
                tracing::debug!(projection = projection.name(), %error, "ack failed");
            }
            if matches!(mode, Mode::Rebuild { .. }) && caught_up {
                return Ok(Followed {
                    checkpoint,
                    quiet: false,
                });
            }
        }
    }

    /// Applies `events` and moves the checkpoint from `from` to `position` in one transaction.
    /// A poison event is parked in the same transaction as the events before it, and the rest of
    /// the batch goes on in the next one.
    async fn commit(
        &self,
        projection: &dyn Projection,
        generation: i64,
        mut from: Option<Position>,
        events: &[&RecordedEvent],
        position: Position,
        mode: Mode,
    ) -> Result<Committed, RuntimeError> {
        let name = projection.name();
        let tables: HashMap<&'static str, String> = projection
            .tables()
            .iter()
            .map(|t| (t.name, t.physical(generation)))
            .collect();
        let mut remaining = events;
        loop {
            let mut tx = ProjectionTx {
                tx: self.db.begin_write().await?,
                tables: tables.clone(),
                dialect: self.db.dialect(),
            };
            if mode == Mode::Live
                && !checkpoint::hold_generation(tx.conn(), name, generation).await?
            {
                tx.tx.rollback().await?;
                return Ok(Committed::Stale);
            }
            let mut poison = None;
            for (index, event) in remaining.iter().enumerate() {
                match projection.apply(&mut tx, event).await {
                    Ok(()) => {}
                    Err(ApplyError::Poison(error)) => {
                        poison = Some((index, error));
                        break;
                    }
                    Err(ApplyError::Transient(error)) => {
                        tx.tx.rollback().await?;
                        return Err(RuntimeError::Sql(sqlx::Error::Protocol(error)));
                    }
                }
            }
            let (applied, parked, upto) = match &poison {
                None => (remaining.len(), None, position),
                Some((index, error)) => {
                    // Start over without the poison event: the failed statement may have left
                    // the transaction unusable (PostgreSQL aborts it).
                    tx.tx.rollback().await?;
                    tx = ProjectionTx {
                        tx: self.db.begin_write().await?,
                        tables: tables.clone(),
                        dialect: self.db.dialect(),
                    };
                    if mode == Mode::Live
                        && !checkpoint::hold_generation(tx.conn(), name, generation).await?
                    {
                        tx.tx.rollback().await?;
                        return Ok(Committed::Stale);
                    }
                    for event in &remaining[..*index] {
                        if let Err(again) = projection.apply(&mut tx, event).await {
                            tx.tx.rollback().await?;
                            return Err(RuntimeError::Sql(sqlx::Error::Protocol(
                                again.to_string(),
                            )));
                        }
                    }
                    let bad = remaining[*index];
                    tracing::warn!(projection = name, event_id = %bad.id, event_type = %bad.event_type, %error, "parking a poison event");
                    checkpoint::park(tx.conn(), name, generation, bad, error).await?;
                    (*index, Some(bad), bad.position)
                }
            };
            let last_event_at = match parked {
                Some(bad) => Some(bad.created),
                None => remaining.last().map(|e| e.created),
            };
            let progress = Progress {
                position: upto,
                applied: applied as u64,
                parked: u64::from(parked.is_some()),
                last_event_at,
            };
            if !checkpoint::advance(tx.conn(), name, generation, from, progress).await? {
                tx.tx.rollback().await?;
                return Ok(Committed::Stale);
            }
            tx.tx.commit().await?;
            from = Some(upto);
            match poison {
                None => return Ok(Committed::Advanced(position)),
                Some((index, _)) => {
                    remaining = &remaining[index + 1..];
                    if remaining.is_empty() && upto == position {
                        return Ok(Committed::Advanced(position));
                    }
                    if remaining.is_empty() {
                        // Only filtered-out events follow: move the checkpoint over them.
                        continue;
                    }
                }
            }
        }
    }

    /// Applies the parked events of `name` again (all, or one event id).
    pub async fn retry(
        &self,
        name: &str,
        event_id: Option<&str>,
    ) -> Result<crate::admin::RetryReport, RuntimeError> {
        let projection = self.find(name)?;
        Ok(crate::admin::retry_parked(&self.db, projection.as_ref(), event_id).await?)
    }

    /// Rebuilds `name` from position 0 into fresh tables and swaps them in atomically; the live
    /// generation keeps serving queries until the swap. Returns the new generation's report.
    pub async fn rebuild(
        &self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<RebuildReport, RuntimeError> {
        let projection = self.find(name)?;
        self.rebuild_projection(&projection, shutdown).await
    }

    async fn rebuild_projection(
        &self,
        projection: &Arc<dyn Projection>,
        shutdown: &CancellationToken,
    ) -> Result<RebuildReport, RuntimeError> {
        let started = Instant::now();
        let name = projection.name();
        let live = checkpoint::ensure_active(&self.db, projection.as_ref()).await?;
        let generation = live.generation + 1;
        {
            let mut tx = self.db.begin_write().await?;
            checkpoint::create_generation(
                &mut tx,
                self.db.dialect(),
                projection.as_ref(),
                generation,
            )
            .await?;
            tx.commit().await?;
        }
        tracing::info!(projection = name, generation, "rebuild started");
        let spec = FeedSpec {
            name: format!("{name}_rebuild_g{generation}"),
            event_type_prefixes: projection.event_types(),
            after: None,
            replay: true,
        };
        let mut feed = self.source.open(&spec).await?;
        let mut checkpoint = None;
        let mut idle = None;
        loop {
            // Catch up with the feed's live end, then try to swap; if the live generation got
            // further meanwhile, keep reading and try again — until the feed stays quiet for a
            // pause: then the live generation is ahead only by positions this feed reports no
            // events or checkpoint for (a filtered feed's checkpoints fall where its reader
            // happened to scan), and the new generation's runner resumes from its own
            // checkpoint, so swapping loses nothing.
            let followed = self
                .follow(
                    projection,
                    feed.as_mut(),
                    generation,
                    checkpoint,
                    Mode::Rebuild { idle },
                    shutdown,
                )
                .await?;
            checkpoint = followed.checkpoint;
            let mut tx = self.db.begin_write().await?;
            let swapped = sqlx::query(
                "UPDATE projection_active SET generation = $3, schema_version = $4, swapped_at_us = $5
                 WHERE name = $1 AND generation = $2",
            )
            .bind(name)
            .bind(live.generation)
            .bind(generation)
            .bind(projection.schema_version())
            .bind(checkpoint::micros(chrono::Utc::now()))
            .execute(&mut *tx)
            .await?;
            if swapped.rows_affected() != 1 {
                tx.rollback().await?;
                return Err(RuntimeError::Sql(sqlx::Error::Protocol(format!(
                    "projection {name} was swapped by another rebuild meanwhile"
                ))));
            }
            let live_checkpoint =
                checkpoint::load_checkpoint(&mut tx, name, live.generation).await?;
            if !followed.quiet && live_checkpoint.is_some_and(|l| checkpoint.is_none_or(|c| c < l))
            {
                tx.rollback().await?;
                idle = Some(self.options.retry_pause);
                continue;
            }
            checkpoint::publish_views(&mut tx, projection.tables(), generation).await?;
            checkpoint::drop_generation(&mut tx, projection.as_ref(), live.generation).await?;
            tx.commit().await?;
            let report = self.report(name, generation, started.elapsed()).await?;
            tracing::info!(
                projection = name,
                generation,
                events = report.events_applied,
                parked = report.events_parked,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "rebuild swapped in"
            );
            return Ok(report);
        }
    }

    async fn report(
        &self,
        name: &str,
        generation: i64,
        elapsed: Duration,
    ) -> Result<RebuildReport, RuntimeError> {
        let status = crate::admin::status_of(&self.db, name).await?;
        Ok(RebuildReport {
            generation,
            events_applied: status.as_ref().map_or(0, |s| s.events_applied),
            events_parked: status.as_ref().map_or(0, |s| s.events_parked),
            elapsed,
        })
    }
}

/// What a rebuild did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// The generation now live.
    pub generation: i64,
    /// Events applied into it.
    pub events_applied: u64,
    /// Events parked while rebuilding.
    pub events_parked: u64,
    /// How long the rebuild took.
    pub elapsed: Duration,
}
