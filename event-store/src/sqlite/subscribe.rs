//! Catch-up subscriptions: read pages from the database until there is nothing new, say
//! `CaughtUp` once, then sleep until the writer announces a commit, and read again.
//!
//! Nothing is pushed to subscribers and nothing is buffered beyond one page: a consumer that
//! falls behind simply reads older pages later, so a slow consumer cannot lose events or make the
//! process hold an unbounded backlog. The writer's `watch` channel only carries the head
//! position, so waking a thousand subscribers costs a thousand cheap indexed queries.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{StreamExt, stream};
use sqlx::SqlitePool;
use tokio::sync::watch;

use super::read::{
    FilterSql, PAGE, WINDOW, pool_head, seen_through, stream_page, stream_view, to_i64,
};
use crate::catch_up::{self, StreamFeed};
use crate::error::{Error, Result};
use crate::model::{
    Direction, Position, RecordedEvent, StreamName, SubscribeFrom, SubscribeToAllOptions,
    SubscriptionItem,
};
use crate::store::Subscription;

/// What a subscription needs from the store, owned so the subscription is `'static`.
#[derive(Clone, Debug)]
pub(super) struct Feed {
    pub(super) pool: SqlitePool,
    pub(super) head: watch::Receiver<u64>,
    /// How often to look at the database even without a wake-up, so writes by another process
    /// sharing the file are still delivered.
    pub(super) poll_interval: Duration,
}

impl Feed {
    /// Waits for a commit announcement or the poll interval. Errors once the store is dropped.
    async fn wait_for_commit(&mut self) -> Result<()> {
        tokio::select! {
            changed = self.head.changed() => {
                changed.map_err(|_| Error::unavailable("the event store was closed"))
            }
            () = tokio::time::sleep(self.poll_interval) => Ok(()),
        }
    }
}

pub(super) fn to_stream(feed: Feed, stream: StreamName, from: SubscribeFrom<u64>) -> Subscription {
    catch_up::subscribe_to_stream(feed, stream, from)
}

impl StreamFeed for Feed {
    async fn read_page(
        &mut self,
        stream: &StreamName,
        from: SubscribeFrom<u64>,
        next: Option<u64>,
    ) -> Result<(u64, Vec<RecordedEvent>)> {
        self.head.borrow_and_update();
        let view = stream_view(&self.pool, stream).await?;
        let next =
            catch_up::first_revision(next, from, view.as_ref().and_then(|v| v.last_revision));
        let Some(view) = view else {
            return Ok((next, Vec::new()));
        };
        let page = stream_page(&self.pool, stream, &view, Direction::Forwards, next, PAGE).await?;
        let next = page.last().map_or(next, |last| last.revision + 1);
        Ok((next, page))
    }

    async fn wait(&mut self) -> Result<()> {
        self.wait_for_commit().await
    }
}

pub(super) fn to_all(feed: Feed, options: SubscribeToAllOptions) -> Subscription {
    let state = AllSubscription {
        feed,
        filtered: !options.filter.is_empty(),
        filter: FilterSql::new(&options.filter),
        from: options.from,
        interval: i64::from(options.checkpoint_interval.get()),
        seen: None,
        reported: 0,
        db_head: 0,
        caught_up: false,
        buffer: VecDeque::new(),
        failed: false,
    };
    stream::unfold(state, |mut s| async move {
        s.next().await.map(|item| (item, s))
    })
    .boxed()
}

struct AllSubscription {
    feed: Feed,
    filter: FilterSql,
    filtered: bool,
    from: SubscribeFrom<Position>,
    interval: i64,
    /// Every position up to this one has been scanned; `None` until the first poll.
    seen: Option<i64>,
    /// The last position delivered as an event or a checkpoint: the consumer's progress.
    reported: i64,
    /// The head as last read from the database (for writers in other processes).
    db_head: i64,
    caught_up: bool,
    buffer: VecDeque<SubscriptionItem>,
    failed: bool,
}

impl AllSubscription {
    async fn next(&mut self) -> Option<Result<SubscriptionItem>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.failed {
                return None;
            }
            match self.fill().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
            if !self.caught_up {
                self.caught_up = true;
                return Some(Ok(SubscriptionItem::CaughtUp));
            }
            let waited = match self.feed.wait_for_commit().await {
                // A timeout may hide a write from another process: look at the real head.
                Ok(()) => pool_head(&self.feed.pool)
                    .await
                    .map(|head| self.db_head = head),
                Err(error) => Err(error),
            };
            if let Err(error) = waited {
                self.failed = true;
                return Some(Err(error));
            }
        }
    }

    /// Scans the next window; `false` when everything committed has been scanned.
    async fn fill(&mut self) -> Result<bool> {
        let seen = match self.seen {
            Some(seen) => seen,
            None => {
                self.db_head = pool_head(&self.feed.pool).await?;
                let seen = match self.from {
                    SubscribeFrom::Start => 0,
                    SubscribeFrom::End => self.db_head,
                    SubscribeFrom::After(position) => seen_through(position),
                };
                self.seen = Some(seen);
                self.reported = seen;
                seen
            }
        };
        // The writer announces a head only after committing it, and positions have no gaps,
        // so everything up to `head` is readable: scanning (and checkpointing) up to it can
        // never pass over an event that is still to come.
        let announced = to_i64(*self.feed.head.borrow_and_update());
        let head = announced.max(self.db_head);
        if seen >= head {
            return Ok(false);
        }
        let hi = if self.filtered {
            head.min(seen.saturating_add(WINDOW))
        } else {
            head
        };
        let page = super::read::all_page(
            &self.feed.pool,
            &self.filter,
            Direction::Forwards,
            seen + 1,
            hi,
            PAGE,
        )
        .await?;
        let scanned = match page.last() {
            Some(last) if page.len() as u64 == PAGE => to_i64(last.position.commit()),
            _ => hi,
        };
        for event in page {
            let at = to_i64(event.position.commit());
            // Report the filtered-out stretch before this event, if it is long enough.
            self.checkpoint_if_due(at - 1);
            self.reported = at;
            self.buffer.push_back(SubscriptionItem::Event(event));
        }
        self.checkpoint_if_due(scanned);
        self.seen = Some(scanned);
        Ok(true)
    }

    fn checkpoint_if_due(&mut self, through: i64) {
        if self.filtered && through - self.reported >= self.interval {
            let at = u64::try_from(through).unwrap_or_default();
            self.buffer
                .push_back(SubscriptionItem::Checkpoint(Position::new(at, at)));
            self.reported = through;
        }
    }
}
