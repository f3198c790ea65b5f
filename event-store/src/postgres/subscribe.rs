//! Catch-up subscriptions: read pages until there is nothing new, say `CaughtUp` once, then
//! sleep until a commit is announced (by this process's writers, or by another process through
//! LISTEN/NOTIFY) or the poll interval passes, and read again.
//!
//! Nothing is pushed to subscribers and nothing is buffered beyond one page: a consumer that
//! falls behind reads older pages later, so a slow consumer cannot lose events or make the
//! process hold an unbounded backlog.
//!
//! `$all` subscriptions read below the horizon like every `$all` read (see `read`). When
//! committed events wait above it — an older transaction is still open, possibly in another
//! process that will never notify this one — they look again after a short delay (1 ms, growing
//! to 50 ms) rather than the full poll interval, so they move on soon after that transaction
//! ends.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{StreamExt, stream};
use sqlx::PgPool;
use tokio::sync::watch;

use super::read::{
    AllPage, Bound, FIRST_HORIZON_WAIT, FilterSql, MAX_HORIZON_WAIT, PAGE, WINDOW, all_page,
    last_below_horizon, stream_page, stream_view,
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
    pub(super) pool: PgPool,
    pub(super) commits: watch::Receiver<u64>,
    /// How often to look at the database even without a wake-up (a lost notification, a
    /// listener reconnecting).
    pub(super) poll_interval: Duration,
}

impl Feed {
    /// Waits for a commit announcement or `timeout`. Errors once the store is dropped.
    async fn wait_for_commit(&mut self, timeout: Duration) -> Result<()> {
        tokio::select! {
            changed = self.commits.changed() => {
                changed.map_err(|_| Error::unavailable("the event store was closed"))
            }
            () = tokio::time::sleep(timeout) => Ok(()),
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
        self.commits.borrow_and_update();
        let view = stream_view(&self.pool, stream).await?;
        let next =
            catch_up::first_revision(next, from, view.as_ref().and_then(|v| v.last_revision));
        let Some(view) = view else {
            return Ok((next, Vec::new()));
        };
        let page = stream_page(
            &self.pool,
            stream,
            &view,
            Direction::Forwards,
            next,
            PAGE as u64,
        )
        .await?;
        let next = page.last().map_or(next, |last| last.revision + 1);
        Ok((next, page))
    }

    async fn wait(&mut self) -> Result<()> {
        self.wait_for_commit(self.poll_interval).await
    }
}

pub(super) fn to_all(feed: Feed, options: SubscribeToAllOptions) -> Subscription {
    let state = AllSubscription {
        backoff: FIRST_HORIZON_WAIT,
        feed,
        filter: FilterSql::new(&options.filter),
        from: options.from,
        interval: u64::from(options.checkpoint_interval.get()),
        bound: None,
        target: None,
        horizon: 0,
        pending: false,
        passed: 0,
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
    from: SubscribeFrom<Position>,
    interval: u64,
    /// Everything up to here has been scanned; `None` until the first poll.
    bound: Option<Bound>,
    /// The xmax of the first page's snapshot: `CaughtUp` waits until the horizon reaches it,
    /// so every transaction running when the subscription started has been read.
    target: Option<u64>,
    /// The horizon of the last page.
    horizon: u64,
    /// Whether committed events waited above the horizon at the last page.
    pending: bool,
    /// Events passed over (filtered out) since the last event or checkpoint delivered.
    passed: u64,
    /// The next wait while the horizon is held back.
    backoff: Duration,
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
                Ok(true) => {
                    self.backoff = FIRST_HORIZON_WAIT;
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
            if !self.buffer.is_empty() {
                continue;
            }
            let settled = self.target.is_none_or(|target| self.horizon >= target);
            if !self.caught_up && settled {
                self.caught_up = true;
                return Some(Ok(SubscriptionItem::CaughtUp));
            }
            let timeout = if self.pending || !settled {
                let timeout = self.backoff;
                self.backoff = (self.backoff * 2)
                    .min(MAX_HORIZON_WAIT)
                    .min(self.feed.poll_interval);
                timeout
            } else {
                self.feed.poll_interval
            };
            if let Err(error) = self.feed.wait_for_commit(timeout).await {
                self.failed = true;
                return Some(Err(error));
            }
        }
    }

    /// Scans the next window; `false` when nothing below the horizon is left to scan.
    async fn fill(&mut self) -> Result<bool> {
        self.feed.commits.borrow_and_update();
        let bound = match self.bound {
            Some(bound) => bound,
            None => {
                let bound = match self.from {
                    SubscribeFrom::Start => Bound::START,
                    SubscribeFrom::After(position) => Bound::at(position),
                    SubscribeFrom::End => {
                        // Live only: what is already readable is skipped. Events committed above
                        // the horizon are delivered as live rather than risk skipping one that
                        // commits after the subscription started.
                        self.caught_up = true;
                        self.buffer.push_back(SubscriptionItem::CaughtUp);
                        last_below_horizon(&self.feed.pool).await?
                    }
                };
                self.bound = Some(bound);
                bound
            }
        };
        let window = if self.filter.filtered { WINDOW } else { PAGE };
        let page = all_page(
            &self.feed.pool,
            &self.filter,
            Direction::Forwards,
            bound,
            None,
            window,
            PAGE,
        )
        .await?;
        self.target.get_or_insert(page.xmax);
        self.horizon = page.xmin;
        self.pending = page.pending;
        let progressed = page.scanned > 0;
        self.bound = Some(page.next_bound(PAGE, bound));
        self.deliver(page);
        Ok(progressed)
    }

    /// Queues the page's events, with checkpoints where enough filtered-out events went by.
    fn deliver(&mut self, page: AllPage) {
        let full = page.events.len() as i64 == PAGE;
        let mut consumed = 0;
        for (n, event) in page.events {
            self.passed += u64::try_from(n - consumed - 1).unwrap_or_default();
            consumed = n;
            // Just below the event: everything before it has been delivered or passed over,
            // and resuming there delivers the event itself.
            let before = Position::new(
                event.position.commit(),
                event.position.prepare().saturating_sub(1),
            );
            self.checkpoint_if_due(before);
            self.passed = 0;
            self.buffer.push_back(SubscriptionItem::Event(event));
        }
        if !full && let Some(last) = page.last {
            self.passed += u64::try_from(page.scanned - consumed).unwrap_or_default();
            self.checkpoint_if_due(last.position());
        }
    }

    fn checkpoint_if_due(&mut self, at: Position) {
        if self.filter.filtered && self.passed >= self.interval {
            self.buffer.push_back(SubscriptionItem::Checkpoint(at));
            self.passed = 0;
        }
    }
}
