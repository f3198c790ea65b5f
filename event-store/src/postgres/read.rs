//! Queries behind stream reads, `$all` reads and subscriptions, and the row decoding they share.
//!
//! `$all` is read in `(transaction id, sequence)` order and only below *the horizon*: the xmin
//! of the statement's own snapshot, under which every transaction has ended. A transaction that
//! is still open can only add rows at or above the horizon, so whatever a page returns is final
//! and a cursor that moves past it never skips an event that commits later. What the horizon
//! costs is delay, never loss: while an old transaction stays open, newer commits wait above it.
//!
//! A read of `$all` also waits until every transaction that was running when it started has
//! ended (the snapshot's xmax becomes the horizon), so a reader always sees the appends that
//! were acknowledged before it began, in their final order.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    AllFilter, ContentType, Direction, EventId, Position, ReadAllOptions, ReadFrom,
    ReadStreamOptions, RecordedEvent, StreamMetadata, StreamName,
};
use crate::store::EventStream;

/// Events fetched per query: enough to amortise a round trip, few enough that a page of large
/// events stays small in memory.
pub(super) const PAGE: i64 = 512;

/// Rows examined per query by filtered `$all` scans, so a filter that matches rarely neither
/// scans the whole table in one statement nor stops checkpoints from advancing.
pub(super) const WINDOW: i64 = 4096;

/// The longest a read waits between two looks at the horizon while an older transaction is
/// still open (commits in this process wake it sooner).
pub(super) const MAX_HORIZON_WAIT: Duration = Duration::from_millis(50);

/// PostgreSQL integers are signed; bounds past `i64::MAX` mean "no bound".
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn stored_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("negative {what} {value}")))
}

/// Transaction ids (`xid8`) cross the wire as text: PostgreSQL has no cast between `xid8` and
/// an integer type, and text keeps all 64 bits.
pub(super) fn parse_xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("transaction id {text:?} is not a number")))
}

pub(super) fn content_type_code(content_type: ContentType) -> i16 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Protobuf => 1,
    }
}

fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name).map_err(Error::unavailable)
}

/// A place in `$all` to scan from, exclusive: `(transaction id, sequence)`. Sequence values
/// start at 1, so `(x, 0)` stands just before transaction `x`'s events.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct Bound {
    pub(super) xid: u64,
    pub(super) seq: i64,
}

impl Bound {
    /// Before every event.
    pub(super) const START: Self = Self { xid: 0, seq: 0 };
    /// After every event.
    const END: Self = Self {
        xid: u64::MAX,
        seq: i64::MAX,
    };

    /// Exactly `position`: scanning forwards from here excludes it (resuming after it).
    pub(super) fn at(position: Position) -> Self {
        Self {
            xid: position.commit(),
            seq: to_i64(position.prepare()),
        }
    }

    /// Just below `position`, so a forwards scan includes it.
    fn below(position: Position) -> Self {
        let at = Self::at(position);
        Self {
            seq: at.seq - 1,
            ..at
        }
    }

    /// Just above `position`, so a backwards scan includes it.
    fn above(position: Position) -> Self {
        let at = Self::at(position);
        Self {
            seq: at.seq.saturating_add(1),
            ..at
        }
    }

    /// The position of a real event this bound sits on (sequence values are never negative).
    pub(super) fn position(self) -> Position {
        Position::new(self.xid, u64::try_from(self.seq).unwrap_or_default())
    }
}

/// Decodes an event row with the columns `xid`, `seq`, `revision`, `event_id`, `event_type`,
/// `content_type`, `data`, `metadata`, `created` (the caller has parsed `stream`).
fn decode(row: &PgRow, stream: StreamName) -> Result<RecordedEvent> {
    let content_type = match column::<i16>(row, "content_type")? {
        0 => ContentType::Json,
        1 => ContentType::Protobuf,
        other => return Err(Error::Corrupt(format!("unknown content type {other}"))),
    };
    let xid = parse_xid(column::<&str>(row, "xid")?)?;
    let seq = stored_u64(column(row, "seq")?, "sequence value")?;
    Ok(RecordedEvent {
        stream,
        revision: stored_u64(column(row, "revision")?, "revision")?,
        position: Position::new(xid, seq),
        id: EventId::from_uuid(column::<Uuid>(row, "event_id")?),
        event_type: column(row, "event_type")?,
        content_type,
        data: Bytes::from(column::<Vec<u8>>(row, "data")?),
        metadata: Bytes::from(column::<Vec<u8>>(row, "metadata")?),
        created: column::<DateTime<Utc>>(row, "created")?,
    })
}

/// What a stream read may return right now.
#[derive(Debug)]
pub(super) struct StreamView {
    /// The last revision ever written, if any.
    pub(super) last_revision: Option<u64>,
    /// The lowest visible revision (soft delete, `$tb`, `$maxCount`).
    lower: u64,
    /// The oldest visible creation time (`$maxAge`), by the database's clock, which also
    /// stamped the events.
    min_created: Option<DateTime<Utc>>,
}

/// Looks the stream up; `None` if it never existed, [`Error::StreamDeleted`] if tombstoned.
pub(super) async fn stream_view(pool: &PgPool, stream: &StreamName) -> Result<Option<StreamView>> {
    let row = sqlx::query(
        "SELECT last_revision, deleted_before, tombstoned, metadata, now() AS now \
         FROM streams WHERE name = $1",
    )
    .bind(stream.as_str())
    .fetch_optional(pool)
    .await
    .map_err(Error::unavailable)?;
    let Some(row) = row else { return Ok(None) };
    if column::<bool>(&row, "tombstoned")? {
        return Err(Error::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let last_revision = column::<Option<i64>>(&row, "last_revision")?
        .map(|r| stored_u64(r, "revision"))
        .transpose()?;
    let mut lower = stored_u64(column(&row, "deleted_before")?, "revision")?;
    let mut min_created = None;
    if let Some(json) = column::<Option<String>>(&row, "metadata")? {
        let metadata = StreamMetadata::from_json(json.as_bytes())?;
        if let Some(tb) = metadata.truncate_before {
            lower = lower.max(tb);
        }
        if let (Some(count), Some(last)) = (metadata.max_count, last_revision) {
            lower = lower.max((last + 1).saturating_sub(count));
        }
        if let Some(age) = metadata.max_age {
            let now: DateTime<Utc> = column(&row, "now")?;
            let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            min_created = Some(
                now.checked_sub_signed(age)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            );
        }
    }
    Ok(Some(StreamView {
        last_revision,
        lower,
        min_created,
    }))
}

const STREAM_EVENT_COLUMNS: &str = "e.transaction_id::text AS xid, e.seq, e.revision, \
     e.event_id, e.event_type, e.content_type, e.data, e.metadata, e.created";

static STREAM_FORWARDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STREAM_EVENT_COLUMNS} FROM events e WHERE e.stream = $1 \
         AND e.revision >= GREATEST($2, $3) AND ($4::timestamptz IS NULL OR e.created >= $4) \
         ORDER BY e.revision LIMIT $5"
    )
});

static STREAM_BACKWARDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STREAM_EVENT_COLUMNS} FROM events e WHERE e.stream = $1 \
         AND e.revision <= $2 AND e.revision >= $3 \
         AND ($4::timestamptz IS NULL OR e.created >= $4) \
         ORDER BY e.revision DESC LIMIT $5"
    )
});

/// Up to `limit` visible events of a stream, starting at `from` (inclusive) in `direction`.
///
/// Stream reads need no horizon: appends to one stream hold its row lock until they commit, so
/// revisions become visible in order, without gaps.
pub(super) async fn stream_page(
    pool: &PgPool,
    stream: &StreamName,
    view: &StreamView,
    direction: Direction,
    from: u64,
    limit: u64,
) -> Result<Vec<RecordedEvent>> {
    let sql = match direction {
        Direction::Forwards => STREAM_FORWARDS.as_str(),
        Direction::Backwards => STREAM_BACKWARDS.as_str(),
    };
    let rows = sqlx::query(sql)
        .bind(stream.as_str())
        .bind(to_i64(from))
        .bind(to_i64(view.lower))
        .bind(view.min_created)
        .bind(to_i64(limit))
        .fetch_all(pool)
        .await
        .map_err(Error::unavailable)?;
    rows.iter().map(|row| decode(row, stream.clone())).collect()
}

/// A `$all` filter as query parameters (see [`AllFilter::matches`] for the semantics, which
/// `^@`, PostgreSQL's starts-with operator, reproduces byte for byte).
#[derive(Clone, Debug)]
pub(super) struct FilterSql {
    pub(super) filtered: bool,
    stream_prefixes: Vec<String>,
    event_type_prefixes: Vec<String>,
    exclude_system: bool,
}

impl FilterSql {
    pub(super) fn new(filter: &AllFilter) -> Self {
        Self {
            filtered: !filter.is_empty(),
            stream_prefixes: filter.stream_prefixes.clone(),
            event_type_prefixes: filter.event_type_prefixes.clone(),
            exclude_system: filter.exclude_system,
        }
    }
}

/// The `$all` page query for a direction, with or without a filter.
///
/// `scan` walks the primary key from the bound, below the horizon, numbering rows; unfiltered,
/// it carries whole events, filtered it carries only what the filter needs and `hits` fetches
/// whole events for the rows that pass, one primary-key probe each (`LIMIT 1` keeps the probe a
/// parameterised lookup rather than a join the planner might turn into a scan). A last row,
/// told apart by its NULL `stream`, reports the scan (how many rows, the last one) and the
/// snapshot (xmin, xmax, whether committed events wait above the horizon).
fn build_all_sql(direction: Direction, filtered: bool) -> String {
    let (cmp, order) = match direction {
        Direction::Forwards => (">", "ASC"),
        Direction::Backwards => ("<", "DESC"),
    };
    let columns = "transaction_id, seq, stream, revision, event_id, event_type, content_type, \
                   data, metadata, created";
    let scan_columns = if filtered {
        "transaction_id, seq, stream, event_type"
    } else {
        columns
    };
    let (hits, source) = if filtered {
        (
            ", hits AS ( \
                   SELECT scan.n, scan.transaction_id, scan.seq FROM scan \
                   WHERE (cardinality($5::text[]) = 0 OR scan.stream ^@ ANY ($5::text[])) \
                     AND (cardinality($6::text[]) = 0 OR scan.event_type ^@ ANY ($6::text[])) \
                     AND NOT ($7::boolean AND (scan.stream ^@ '$' OR scan.event_type ^@ '$')) \
                   ORDER BY scan.n LIMIT $8)"
                .to_owned(),
            format!(
                "hits h CROSS JOIN LATERAL ( \
                   SELECT {columns}, h.n FROM events e \
                   WHERE e.transaction_id = h.transaction_id AND e.seq = h.seq LIMIT 1) page"
            ),
        )
    } else {
        (String::new(), "scan page".to_owned())
    };
    format!(
        "WITH bounds AS MATERIALIZED ( \
           SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin, \
                  pg_snapshot_xmax(pg_current_snapshot()) AS xmax), \
         scan AS ( \
           SELECT {scan_columns}, \
                  row_number() OVER (ORDER BY transaction_id {order}, seq {order}) AS n \
           FROM events \
           WHERE (transaction_id, seq) {cmp} ($1::text::xid8, $2::bigint) \
             AND transaction_id < (SELECT LEAST(b.xmin, $3::text::xid8) FROM bounds b) \
           ORDER BY transaction_id {order}, seq {order} \
           LIMIT $4){hits} \
         SELECT page.n, page.transaction_id::text AS xid, page.seq, page.stream, page.revision, \
                page.event_id, page.event_type, page.content_type, page.data, page.metadata, \
                page.created, NULL::text AS xmin, NULL::text AS xmax, NULL::boolean AS pending \
         FROM {source} \
         UNION ALL \
         SELECT last.n, last.transaction_id::text, last.seq, NULL, NULL, NULL, NULL, NULL, NULL, \
                NULL, NULL, b.xmin::text, b.xmax::text, \
                COALESCE((SELECT p.transaction_id FROM events p \
                          ORDER BY p.transaction_id DESC LIMIT 1) >= b.xmin, false) \
         FROM bounds b LEFT JOIN LATERAL ( \
           SELECT scan.n, scan.transaction_id, scan.seq FROM scan ORDER BY scan.n DESC LIMIT 1 \
         ) last ON true"
    )
}

static ALL_SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
    [
        build_all_sql(Direction::Forwards, false),
        build_all_sql(Direction::Forwards, true),
        build_all_sql(Direction::Backwards, false),
        build_all_sql(Direction::Backwards, true),
    ]
});

/// One page of `$all`.
#[derive(Debug)]
pub(super) struct AllPage {
    /// The events that passed the filter, with their row number in the scan (from 1).
    pub(super) events: Vec<(i64, RecordedEvent)>,
    /// How many rows the scan examined.
    pub(super) scanned: i64,
    /// The last row examined.
    pub(super) last: Option<Bound>,
    /// The snapshot's xmin: the horizon, when no target lowered it.
    pub(super) xmin: u64,
    /// The snapshot's xmax: every transaction that had begun when the page was read is below.
    pub(super) xmax: u64,
    /// Whether committed events wait above the horizon for an older transaction to end.
    pub(super) pending: bool,
}

impl AllPage {
    /// Where the next page starts, given the `limit` this one was read with: after the last
    /// event when the page is full (rows after it were not looked at), else after the scan.
    pub(super) fn next_bound(&self, limit: i64, current: Bound) -> Bound {
        match self.events.last() {
            Some((_, event)) if self.events.len() as i64 == limit => Bound::at(event.position),
            _ => self.last.unwrap_or(current),
        }
    }

    /// Whether the scan reached the horizon (neither the window nor the limit stopped it).
    pub(super) fn exhausted(&self, window: i64, limit: i64) -> bool {
        self.scanned < window && (self.events.len() as i64) < limit
    }
}

/// Reads up to `limit` events that pass `filter` after `bound` (exclusive) in `direction`,
/// looking at no more than `window` rows and nothing at or above `min(xmin, target)`.
pub(super) async fn all_page(
    pool: &PgPool,
    filter: &FilterSql,
    direction: Direction,
    bound: Bound,
    target: Option<u64>,
    window: i64,
    limit: i64,
) -> Result<AllPage> {
    let index = match direction {
        Direction::Forwards => 0,
        Direction::Backwards => 2,
    } + usize::from(filter.filtered);
    let mut query = sqlx::query(ALL_SQL[index].as_str())
        .bind(bound.xid.to_string())
        .bind(bound.seq)
        .bind(target.map(|t| t.to_string()))
        .bind(window);
    if filter.filtered {
        query = query
            .bind(filter.stream_prefixes.as_slice())
            .bind(filter.event_type_prefixes.as_slice())
            .bind(filter.exclude_system)
            .bind(limit);
    }
    let rows = query.fetch_all(pool).await.map_err(Error::unavailable)?;
    let mut page = AllPage {
        events: Vec::with_capacity(rows.len().saturating_sub(1)),
        scanned: 0,
        last: None,
        xmin: 0,
        xmax: 0,
        pending: false,
    };
    let mut marker = false;
    // A page holds few streams; parse each name once.
    let mut streams: HashMap<&str, StreamName> = HashMap::new();
    for row in &rows {
        let n: Option<i64> = column(row, "n")?;
        let Some(name) = column::<Option<&str>>(row, "stream")? else {
            marker = true;
            page.scanned = n.unwrap_or(0);
            page.last = match column::<Option<String>>(row, "xid")? {
                Some(xid) => Some(Bound {
                    xid: parse_xid(&xid)?,
                    seq: column(row, "seq")?,
                }),
                None => None,
            };
            let xmin: Option<String> = column(row, "xmin")?;
            let xmax: Option<String> = column(row, "xmax")?;
            page.xmin = parse_xid(xmin.as_deref().unwrap_or_default())?;
            page.xmax = parse_xid(xmax.as_deref().unwrap_or_default())?;
            page.pending = column::<Option<bool>>(row, "pending")?.unwrap_or(false);
            continue;
        };
        let stream = match streams.get(name) {
            Some(stream) => stream.clone(),
            None => {
                let parsed = StreamName::parse(name)
                    .map_err(|e| Error::Corrupt(format!("stored stream name {name:?}: {e}")))?;
                streams.insert(name, parsed.clone());
                parsed
            }
        };
        page.events
            .push((n.unwrap_or_default(), decode(row, stream)?));
    }
    if !marker {
        return Err(Error::Corrupt(
            "a page of $all came back without its summary".to_owned(),
        ));
    }
    // UNION ALL promises no order; the row numbers carry the scan's.
    page.events.sort_unstable_by_key(|(n, _)| *n);
    Ok(page)
}

/// The last event below the horizon (what "the end of `$all`" means to a new subscription).
pub(super) async fn last_below_horizon(pool: &PgPool) -> Result<Bound> {
    let row = sqlx::query(
        "SELECT transaction_id::text AS xid, seq FROM events \
         WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY transaction_id DESC, seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(Error::unavailable)?;
    match row {
        Some(row) => Ok(Bound {
            xid: parse_xid(&column::<String>(&row, "xid")?)?,
            seq: column(&row, "seq")?,
        }),
        None => Ok(Bound::START),
    }
}

/// Waits for a commit in this process or for `backoff`, then lengthens `backoff` for next time.
/// Used while the horizon is held back, possibly by a transaction of another process, which
/// sends no wake-up this process could see.
pub(super) async fn wait_for_horizon(commits: &mut watch::Receiver<u64>, backoff: &mut Duration) {
    let timeout = *backoff;
    *backoff = (*backoff * 2).min(MAX_HORIZON_WAIT);
    tokio::select! {
        changed = commits.changed() => {
            // The store is gone; keep pacing the retries by time alone.
            if changed.is_err() {
                tokio::time::sleep(timeout).await;
            }
        }
        () = tokio::time::sleep(timeout) => {}
    }
}

/// The first wait while the horizon is held back: about one group commit.
pub(super) const FIRST_HORIZON_WAIT: Duration = Duration::from_millis(1);

pub(super) fn read_stream(
    pool: PgPool,
    stream: StreamName,
    options: ReadStreamOptions,
) -> EventStream {
    struct Cursor {
        pool: PgPool,
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
            return Ok(None);
        };
        let from = match (c.next, c.direction, c.from) {
            (Some(next), _, _) => next,
            (None, _, ReadFrom::At(revision)) => revision,
            (None, _, ReadFrom::Start) => 0,
            (None, Direction::Forwards, ReadFrom::End) => return Ok(None),
            (None, Direction::Backwards, ReadFrom::End) => match view.last_revision {
                Some(last) => last,
                None => return Ok(None),
            },
        };
        let limit = c.remaining.min(PAGE as u64);
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

pub(super) fn read_all(
    pool: PgPool,
    commits: watch::Receiver<u64>,
    options: ReadAllOptions,
) -> EventStream {
    struct Cursor {
        pool: PgPool,
        commits: watch::Receiver<u64>,
        filter: FilterSql,
        direction: Direction,
        /// Where the next page starts (exclusive); `None` when there is nothing to read.
        bound: Option<Bound>,
        /// The xmax of the first page's snapshot: the read covers every transaction below it,
        /// so it waits for the horizon to get there.
        target: Option<u64>,
        remaining: u64,
        backoff: Duration,
    }
    let bound = match (options.direction, options.from) {
        (Direction::Forwards, ReadFrom::Start) => Some(Bound::START),
        (Direction::Forwards, ReadFrom::At(position)) => Some(Bound::below(position)),
        (Direction::Backwards, ReadFrom::End) => Some(Bound::END),
        (Direction::Backwards, ReadFrom::At(position)) => Some(Bound::above(position)),
        (Direction::Forwards, ReadFrom::End) | (Direction::Backwards, ReadFrom::Start) => None,
    };
    let cursor = Cursor {
        pool,
        commits,
        filter: FilterSql::new(&options.filter),
        direction: options.direction,
        bound,
        target: None,
        remaining: options.limit,
        backoff: FIRST_HORIZON_WAIT,
    };
    stream::try_unfold(cursor, |mut c| async move {
        loop {
            let Some(bound) = c.bound else {
                return Ok::<_, Error>(None);
            };
            if c.remaining == 0 {
                return Ok(None);
            }
            let limit = to_i64(c.remaining).min(PAGE);
            let window = if c.filter.filtered { WINDOW } else { limit };
            // Seen before the query, so a commit that lands during it still ends a wait.
            c.commits.borrow_and_update();
            let page = all_page(
                &c.pool,
                &c.filter,
                c.direction,
                bound,
                c.target,
                window,
                limit,
            )
            .await?;
            let target = *c.target.get_or_insert(page.xmax);
            let settled = page.xmin >= target;
            if c.direction == Direction::Backwards && !settled {
                // Reading down from the top is only safe once nothing below the target can
                // still appear.
                wait_for_horizon(&mut c.commits, &mut c.backoff).await;
                continue;
            }
            c.remaining -= page.events.len() as u64;
            let exhausted = page.exhausted(window, limit);
            c.bound = if exhausted && settled {
                None
            } else {
                Some(page.next_bound(limit, bound))
            };
            if page.events.is_empty() {
                if exhausted && !settled {
                    wait_for_horizon(&mut c.commits, &mut c.backoff).await;
                }
                continue;
            }
            c.backoff = FIRST_HORIZON_WAIT;
            let events = page.events.into_iter().map(|(_, event)| Ok(event));
            return Ok(Some((stream::iter(events), c)));
        }
    })
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusive_starts_become_exclusive_bounds_around_the_position() {
        let p = Position::new(7, 3);
        assert_eq!(Bound::below(p), Bound { xid: 7, seq: 2 });
        assert_eq!(Bound::above(p), Bound { xid: 7, seq: 4 });
        assert_eq!(Bound::at(p).position(), p);
        // A position minted elsewhere with a huge prepare part still orders sensibly.
        let foreign = Position::new(7, u64::MAX);
        assert_eq!(Bound::below(foreign).seq, i64::MAX - 1);
        assert_eq!(Bound::above(foreign).seq, i64::MAX);
        assert!(Bound::below(Position::new(0, 0)) < Bound::START);
    }
}
