//! WatchSchedule: a snapshot of a schedule range, then every change to it, read from the
//! `lessons` read model.
//!
//! Each row carries the `$all` position of the last event folded into it, and the projection
//! commits rows in position order, so "rows past the highest position seen" is an exact change
//! feed: a watch polls it every [`POLL_INTERVAL`] and sends what entered, changed in, or left
//! the range. Polling one indexed query per watch keeps the watch independent of where the
//! projections run (same process or another machine).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use prost::Message;
use repit_projections::ReadModelDb;
use repit_proto::repit::lesson::v1 as pb;
use sqlx::Row;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::access::Visibility;
use crate::domain::lesson::interval_of;
use crate::error::AppError;
use crate::projections::LESSONS_TABLE;
use crate::queries::{Owner, schedule_entry};

/// How often a watch looks for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A heartbeat after this long without a message (the contract's 30 s).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// Open watches per process; more are refused with RESOURCE_EXHAUSTED. Per user once identity
/// exists.
pub const MAX_WATCHES: usize = 1024;

/// What one watch shows.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub owner: Owner,
    /// The caller's tenancy: a tutor watching a student sees only the lessons they teach.
    pub visibility: Visibility,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub zone: Tz,
    pub include_cancelled: bool,
}

impl WatchSpec {
    fn shows(&self, lesson: &pb::Lesson) -> bool {
        let (start, _) = interval_of(lesson);
        self.visibility.allows(&lesson.tutor_id, &lesson.student_id)
            && start >= self.from
            && start < self.until
            && (self.include_cancelled || lesson.state() != pb::LessonState::Cancelled)
    }
}

/// Hands out the permits that bound open watches.
#[derive(Clone, Debug)]
pub struct Watches {
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

type Cursor = (i64, i64);

impl Watches {
    /// Watches that end with UNAVAILABLE when `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_WATCHES)),
            shutdown,
        }
    }

    /// Starts a watch: the receiver yields the snapshot, then changes, until the client goes
    /// away or the server shuts down.
    pub async fn open(
        &self,
        db: ReadModelDb,
        spec: WatchSpec,
    ) -> Result<mpsc::Receiver<Result<pb::WatchScheduleResponse, Status>>, AppError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::Exhausted("too many open schedule watches".into()))?;
        let (entries, cursor) = snapshot(&db, &spec).await?;
        let (sender, receiver) = mpsc::channel(64);
        let first = pb::WatchScheduleResponse {
            update: Some(pb::watch_schedule_response::Update::Snapshot(
                pb::ScheduleSnapshot {
                    time_zone: spec.zone.name().to_owned(),
                    entries: entries.clone(),
                },
            )),
        };
        let visible: HashSet<String> = entries
            .iter()
            .filter_map(|e| e.lesson.as_ref().map(|l| l.lesson_id.clone()))
            .collect();
        sender
            .send(Ok(first))
            .await
            .map_err(|_| AppError::Internal("watch closed before its snapshot".into()))?;
        tokio::spawn(follow(
            db,
            spec,
            cursor,
            visible,
            sender,
            self.shutdown.clone(),
            permit,
        ));
        Ok(receiver)
    }
}

fn owner_column(owner: Owner) -> (&'static str, String) {
    match owner {
        Owner::Tutor(id) => ("tutor_id", id.to_string()),
        Owner::Student(id) => ("student_id", id.to_string()),
    }
}

/// The entries in range and the highest position among the owner's rows, read together.
async fn snapshot(
    db: &ReadModelDb,
    spec: &WatchSpec,
) -> Result<(Vec<pb::ScheduleEntry>, Cursor), AppError> {
    let (column, id) = owner_column(spec.owner);
    let mut tx = db.pool().begin().await?;
    let cursor_row = sqlx::query(&format!(
        "SELECT position_commit, position_prepare FROM {LESSONS_TABLE} WHERE {column} = $1
         ORDER BY position_commit DESC, position_prepare DESC LIMIT 1"
    ))
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?;
    let cursor = match cursor_row {
        Some(row) => (row.try_get(0)?, row.try_get(1)?),
        None => (-1, -1),
    };
    let rows = sqlx::query(&format!(
        "SELECT resource FROM {LESSONS_TABLE}
         WHERE {column} = $1 AND start_at_us >= $2 AND start_at_us < $3
         ORDER BY start_at_us, lesson_id"
    ))
    .bind(&id)
    .bind(spec.from.timestamp_micros())
    .bind(spec.until.timestamp_micros())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut entries = Vec::new();
    for row in rows {
        let lesson = decode(&row)?;
        if spec.shows(&lesson) {
            entries.push(schedule_entry(lesson, spec.zone));
        }
    }
    Ok((entries, cursor))
}

fn decode(row: &sqlx::any::AnyRow) -> Result<pb::Lesson, AppError> {
    let resource: Vec<u8> = row.try_get("resource")?;
    pb::Lesson::decode(resource.as_slice())
        .map_err(|e| AppError::Internal(format!("stored lesson does not decode: {e}")))
}

/// Rows of the owner changed after `cursor`, in the order they were projected.
async fn changes(
    db: &ReadModelDb,
    spec: &WatchSpec,
    cursor: Cursor,
) -> Result<Vec<(pb::Lesson, Cursor)>, AppError> {
    let (column, id) = owner_column(spec.owner);
    let rows = sqlx::query(&format!(
        "SELECT resource, position_commit, position_prepare FROM {LESSONS_TABLE}
         WHERE {column} = $1
           AND (position_commit > $2 OR (position_commit = $2 AND position_prepare > $3))
         ORDER BY position_commit, position_prepare"
    ))
    .bind(&id)
    .bind(cursor.0)
    .bind(cursor.1)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| Ok((decode(row)?, (row.try_get(1)?, row.try_get(2)?))))
        .collect()
}

async fn follow(
    db: ReadModelDb,
    spec: WatchSpec,
    mut cursor: Cursor,
    mut visible: HashSet<String>,
    sender: mpsc::Sender<Result<pb::WatchScheduleResponse, Status>>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    use pb::watch_schedule_response::Update;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(Status::unavailable("the server is shutting down; reconnect"))).await;
                return;
            }
            () = sender.closed() => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let changed = match changes(&db, &spec, cursor).await {
            Ok(changed) => changed,
            Err(error) => {
                let _ = sender.send(Err(error.into_status(""))).await;
                return;
            }
        };
        let mut updates = Vec::new();
        for (lesson, position) in changed {
            cursor = position;
            if spec.shows(&lesson) {
                visible.insert(lesson.lesson_id.clone());
                updates.push(Update::Upserted(schedule_entry(lesson, spec.zone)));
            } else if visible.remove(&lesson.lesson_id) {
                updates.push(Update::RemovedLessonId(lesson.lesson_id));
            }
        }
        if updates.is_empty() {
            quiet += POLL_INTERVAL;
            if quiet >= HEARTBEAT {
                updates.push(Update::Heartbeat(pb::WatchScheduleHeartbeat {}));
            }
        }
        for update in updates {
            quiet = Duration::ZERO;
            let message = pb::WatchScheduleResponse {
                update: Some(update),
            };
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
    }
}
