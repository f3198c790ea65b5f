//! Queries behind stream reads, `$all` reads and subscriptions, and the row decoding they share.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    AllFilter, ContentType, Direction, EventId, Position, ReadAllOptions, ReadFrom,
    ReadStreamOptions, RecordedEvent, StreamMetadata, StreamName,
};
use crate::store::EventStream;

/// Events fetched per query: enough to amortise a round trip to SQLite's worker thread, few enough
/// that a page of large events stays small in memory.
pub(super) const PAGE: u64 = 256;

/// Positions examined per query by filtered `$all` scans. Positions are gap-free, so this bounds
/// the rows SQLite reads per query, and lets checkpoints advance while few events match.
pub(super) const WINDOW: i64 = 4096;

const STREAM_EVENT_COLUMNS: &str = "e.position, e.revision, e.event_id, e.event_type, \
     e.content_type, e.data, e.metadata, e.created";

/// SQLite integers are signed; bounds past `i64::MAX` mean "no bound".
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stored_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("negative {what} {value}")))
}

pub(super) fn position(value: i64) -> Result<Position> {
    let value = stored_u64(value, "position")?;
    Ok(Position::new(value, value))
}

pub(super) fn content_type_code(content_type: ContentType) -> i64 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Protobuf => 1,
    }
}

/// Decodes the columns of [`STREAM_EVENT_COLUMNS`] (and `s.name` after them, which the caller
/// has already turned into `stream`).
fn decode(row: &SqliteRow, stream: StreamName) -> Result<RecordedEvent> {
    let content_type = match row.try_get::<i64, _>(4).map_err(Error::unavailable)? {
        0 => ContentType::Json,
        1 => ContentType::Protobuf,
        other => return Err(Error::Corrupt(format!("unknown content type {other}"))),
    };
    let created: i64 = row.try_get(7).map_err(Error::unavailable)?;
    let created = DateTime::<Utc>::from_timestamp_micros(created)
        .ok_or_else(|| Error::Corrupt(format!("timestamp {created} out of range")))?;
    Ok(RecordedEvent {
        stream,
        revision: stored_u64(row.try_get(1).map_err(Error::unavailable)?, "revision")?,
        position: position(row.try_get(0).map_err(Error::unavailable)?)?,
        id: EventId::from_uuid(row.try_get::<Uuid, _>(2).map_err(Error::unavailable)?),
        event_type: row.try_get(3).map_err(Error::unavailable)?,
        content_type,
        data: Bytes::from(row.try_get::<Vec<u8>, _>(5).map_err(Error::unavailable)?),
        metadata: Bytes::from(row.try_get::<Vec<u8>, _>(6).map_err(Error::unavailable)?),
        created,
    })
}

/// The highest committed position (0 for an empty store).
pub(super) async fn head(conn: &mut SqliteConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(conn)
        .await
        .map_err(Error::unavailable)
}

pub(super) async fn pool_head(pool: &SqlitePool) -> Result<i64> {
    let mut conn = pool.acquire().await.map_err(Error::unavailable)?;
    head(&mut conn).await
}

/// What a stream read may return right now.
#[derive(Debug)]
pub(super) struct StreamView {
    id: i64,
    /// The last revision ever written, if any.
    pub(super) last_revision: Option<u64>,
    /// The lowest visible revision (soft delete, `$tb`, `$maxCount`).
    lower: u64,
    /// The oldest visible `created` (`$maxAge`), in microseconds.
    min_created: i64,
}

/// Looks the stream up; `None` if it never existed, [`Error::StreamDeleted`] if tombstoned.
pub(super) async fn stream_view(
    pool: &SqlitePool,
    stream: &StreamName,
) -> Result<Option<StreamView>> {
    let row = sqlx::query(
        "SELECT stream_id, last_revision, deleted_before, tombstoned, metadata \
         FROM streams WHERE name = ?",
    )
    .bind(stream.as_str())
    .fetch_optional(pool)
    .await
    .map_err(Error::unavailable)?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<bool, _>(3).map_err(Error::unavailable)? {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let last_revision = row
        .try_get::<Option<i64>, _>(1)
        .map_err(Error::unavailable)?
        .map(|r| stored_u64(r, "revision"))
        .transpose()?;
    let mut lower = stored_u64(row.try_get(2).map_err(Error::unavailable)?, "revision")?;
    let mut min_created = i64::MIN;
    if let Some(json) = row
        .try_get::<Option<String>, _>(4)
        .map_err(Error::unavailable)?
    {
        let metadata = StreamMetadata::from_json(json.as_bytes())?;
        if let Some(tb) = metadata.truncate_before {
            lower = lower.max(tb);
        }
        if let (Some(count), Some(last)) = (metadata.max_count, last_revision) {
            lower = lower.max((last + 1).saturating_sub(count));
        }
        if let Some(age) = metadata.max_age {
            let age = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
            min_created = Utc::now().timestamp_micros().saturating_sub(age);
        }
    }
    Ok(Some(StreamView {
        id: row.try_get(0).map_err(Error::unavailable)?,
        last_revision,
        lower,
        min_created,
    }))
}

/// Up to `limit` visible events of a stream, starting at `from` (inclusive) in `direction`.
pub(super) async fn stream_page(
    pool: &SqlitePool,
    stream: &StreamName,
    view: &StreamView,
    direction: Direction,
    from: u64,
    limit: u64,
) -> Result<Vec<RecordedEvent>> {
    let sql = match direction {
        Direction::Forwards => format!(
            "SELECT {STREAM_EVENT_COLUMNS} FROM events e WHERE e.stream_id = ?1 \
             AND e.revision >= MAX(?2, ?3) AND e.created >= ?4 ORDER BY e.revision LIMIT ?5"
        ),
        Direction::Backwards => format!(
            "SELECT {STREAM_EVENT_COLUMNS} FROM events e WHERE e.stream_id = ?1 \
             AND e.revision <= ?2 AND e.revision >= ?3 AND e.created >= ?4 \
             ORDER BY e.revision DESC LIMIT ?5"
        ),
    };
    let rows = sqlx::query(&sql)
        .bind(view.id)
        .bind(to_i64(from))
        .bind(to_i64(view.lower))
        .bind(view.min_created)
        .bind(to_i64(limit))
        .fetch_all(pool)
        .await
        .map_err(Error::unavailable)?;
    rows.iter().map(|row| decode(row, stream.clone())).collect()
}

/// Builds the SQL for a `$all` filter and the values to bind to it, in order.
pub(super) struct FilterSql {
    clause: String,
    binds: Vec<(i64, String)>,
}

impl FilterSql {
    pub(super) fn new(filter: &AllFilter) -> Self {
        let mut clause = String::new();
        let mut binds = Vec::new();
        // `substr` counts characters, so the bound length is the prefix's character count.
        let mut any_of = |column: &str, prefixes: &[String]| {
            if prefixes.is_empty() {
                return;
            }
            let tests: Vec<String> = prefixes
                .iter()
                .map(|_| format!("substr({column}, 1, ?) = ?"))
                .collect();
            clause.push_str(&format!(" AND ({})", tests.join(" OR ")));
            binds.extend(
                prefixes
                    .iter()
                    .map(|p| (to_i64(p.chars().count() as u64), p.clone())),
            );
        };
        any_of("s.name", &filter.stream_prefixes);
        any_of("e.event_type", &filter.event_type_prefixes);
        if filter.exclude_system {
            clause
                .push_str(" AND substr(s.name, 1, 1) <> '$' AND substr(e.event_type, 1, 1) <> '$'");
        }
        Self { clause, binds }
    }
}

/// Up to `limit` events of `$all` with positions in `lo..=hi` that pass `filter`.
pub(super) async fn all_page(
    pool: &SqlitePool,
    filter: &FilterSql,
    direction: Direction,
    lo: i64,
    hi: i64,
    limit: u64,
) -> Result<Vec<RecordedEvent>> {
    let order = match direction {
        Direction::Forwards => "ASC",
        Direction::Backwards => "DESC",
    };
    let sql = format!(
        "SELECT {STREAM_EVENT_COLUMNS}, s.name FROM events e \
         JOIN streams s ON s.stream_id = e.stream_id \
         WHERE e.position BETWEEN ? AND ?{} ORDER BY e.position {order} LIMIT ?",
        filter.clause
    );
    let mut query = sqlx::query(&sql).bind(lo).bind(hi);
    for (len, prefix) in &filter.binds {
        query = query.bind(*len).bind(prefix.as_str());
    }
    let rows = query
        .bind(to_i64(limit))
        .fetch_all(pool)
        .await
        .map_err(Error::unavailable)?;
    // Consecutive events often share a stream; reuse its parsed name instead of re-checking it.
    let mut last: Option<StreamName> = None;
    rows.iter()
        .map(|row| {
            let name: &str = row.try_get(8).map_err(Error::unavailable)?;
            let stream = match &last {
                Some(s) if s.as_str() == name => s.clone(),
                _ => {
                    let parsed = StreamName::parse(name)
                        .map_err(|e| Error::Corrupt(format!("stored stream name {name:?}: {e}")))?;
                    last = Some(parsed.clone());
                    parsed
                }
            };
            decode(row, stream)
        })
        .collect()
}

/// The first position at or after `position` (inclusive bound for forward reads).
pub(super) fn first_at_or_after(position: Position) -> i64 {
    let (commit, prepare) = (to_i64(position.commit()), position.prepare());
    if prepare <= position.commit() {
        commit
    } else {
        commit.saturating_add(1)
    }
}

/// The last position at or before `position` (inclusive bound for backward reads).
fn last_at_or_before(position: Position) -> i64 {
    let (commit, prepare) = (to_i64(position.commit()), position.prepare());
    if prepare >= position.commit() {
        commit
    } else {
        commit - 1
    }
}

/// The last position strictly before the first one after `position`: what a subscription that
/// resumes after `position` has already seen.
pub(super) fn seen_through(position: Position) -> i64 {
    let (commit, prepare) = (to_i64(position.commit()), position.prepare());
    if prepare < position.commit() {
        commit - 1
    } else {
        commit
    }
}

pub(super) fn read_stream(
    pool: SqlitePool,
    stream: StreamName,
    options: ReadStreamOptions,
) -> EventStream {
    struct Cursor {
        pool: SqlitePool,
        stream: StreamName,
        direction: Direction,
        /// The next revision to read (inclusive); `None` before the first page.
        next: Option<u64>,
        from: ReadFrom<u64>,
        remaining: u64,
        done: bool,
    }
    let cursor = Cursor {
        pool,
        stream,
        direction: options.direction,
        next: None,
        from: options.from,
        remaining: options.limit,
        done: false,
    };
    stream::try_unfold(cursor, |mut c| async move {
        if c.done || c.remaining == 0 {
            return Ok::<_, Error>(None);
        }
        let Some(view) = stream_view(&c.pool, &c.stream).await? else {
            return Ok::<_, Error>(None);
        };
        let from = match (c.next, c.direction, c.from) {
            (Some(next), _, _) => next,
            (None, _, ReadFrom::At(revision)) => revision,
            (None, Direction::Forwards, ReadFrom::Start)
            | (None, Direction::Backwards, ReadFrom::Start) => 0,
            (None, Direction::Forwards, ReadFrom::End) => return Ok(None),
            (None, Direction::Backwards, ReadFrom::End) => match view.last_revision {
                Some(last) => last,
                None => return Ok(None),
            },
        };
        let limit = c.remaining.min(PAGE);
        let page = stream_page(&c.pool, &c.stream, &view, c.direction, from, limit).await?;
        c.remaining -= page.len() as u64;
        c.done = (page.len() as u64) < limit;
        if let Some(last) = page.last() {
            match c.direction {
                Direction::Forwards => c.next = Some(last.revision + 1),
                Direction::Backwards if last.revision == 0 => c.done = true,
                Direction::Backwards => c.next = Some(last.revision - 1),
            }
        }
        Ok(Some((stream::iter(page.into_iter().map(Ok)), c)))
    })
    .try_flatten()
    .boxed()
}

pub(super) fn read_all(pool: SqlitePool, options: ReadAllOptions) -> EventStream {
    struct Cursor {
        pool: SqlitePool,
        filter: FilterSql,
        filtered: bool,
        direction: Direction,
        from: ReadFrom<Position>,
        /// The next position to scan (inclusive) and the last one to scan; `None` before the
        /// first page. The end is the head when the read started, so filtered windows never
        /// run past what is committed.
        range: Option<(i64, i64)>,
        remaining: u64,
    }
    let cursor = Cursor {
        pool,
        filtered: !options.filter.is_empty(),
        filter: FilterSql::new(&options.filter),
        direction: options.direction,
        from: options.from,
        range: None,
        remaining: options.limit,
    };
    stream::try_unfold(cursor, |mut c| async move {
        let (next, end) = match c.range {
            Some(range) => range,
            None => {
                let head = pool_head(&c.pool).await?;
                match c.direction {
                    Direction::Forwards => match c.from {
                        ReadFrom::Start => (1, head),
                        ReadFrom::End => (head + 1, head),
                        ReadFrom::At(position) => (first_at_or_after(position).max(1), head),
                    },
                    // Backwards, `next` is the highest position still to scan and `end` the
                    // lowest.
                    Direction::Backwards => match c.from {
                        ReadFrom::Start => (0, 1),
                        ReadFrom::End => (head, 1),
                        ReadFrom::At(position) => (last_at_or_before(position).min(head), 1),
                    },
                }
            }
        };
        let exhausted = match c.direction {
            Direction::Forwards => next > end,
            Direction::Backwards => next < end,
        };
        if exhausted || c.remaining == 0 {
            return Ok::<_, Error>(None);
        }
        let limit = c.remaining.min(PAGE);
        let (page, scanned) = match c.direction {
            Direction::Forwards => {
                let hi = if c.filtered {
                    end.min(next.saturating_add(WINDOW - 1))
                } else {
                    end
                };
                let page = all_page(&c.pool, &c.filter, c.direction, next, hi, limit).await?;
                let scanned = match page.last() {
                    Some(last) if page.len() as u64 == limit => to_i64(last.position.commit()),
                    _ => hi,
                };
                (page, scanned + 1)
            }
            Direction::Backwards => {
                let lo = if c.filtered {
                    end.max(next.saturating_sub(WINDOW - 1))
                } else {
                    end
                };
                let page = all_page(&c.pool, &c.filter, c.direction, lo, next, limit).await?;
                let scanned = match page.last() {
                    Some(last) if page.len() as u64 == limit => to_i64(last.position.commit()),
                    _ => lo,
                };
                (page, scanned - 1)
            }
        };
        c.remaining -= page.len() as u64;
        c.range = Some((scanned, end));
        Ok(Some((stream::iter(page.into_iter().map(Ok)), c)))
    })
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_positions_fall_between_sqlite_positions() {
        // SQLite positions are (n, n); a position minted elsewhere sorts between two of them.
        let between = Position::new(5, 3); // after (4, 4), before (5, 5)
        assert_eq!(first_at_or_after(between), 5);
        assert_eq!(last_at_or_before(between), 4);
        assert_eq!(seen_through(between), 4);
        let exact = Position::new(5, 5);
        assert_eq!(
            (
                first_at_or_after(exact),
                last_at_or_before(exact),
                seen_through(exact)
            ),
            (5, 5, 5)
        );
        let above = Position::new(5, 7); // after (5, 5), before (6, 6)
        assert_eq!(
            (
                first_at_or_after(above),
                last_at_or_before(above),
                seen_through(above)
            ),
            (6, 5, 5)
        );
    }
}
