//! The catch-up loop of stream subscriptions, shared by the backends that read their own tables
//! (SQLite, PostgreSQL): read a page after the last revision delivered until there is nothing
//! new, say `CaughtUp` once, then wait for a commit announcement (or a poll) and read again.
//!
//! Nothing is buffered beyond one page, so a slow consumer reads older pages later instead of
//! making the process hold a backlog. A backend supplies only how to read a page and how to wait.

use std::collections::VecDeque;
use std::future::Future;

use futures::{StreamExt, stream};

use crate::error::Result;
use crate::model::{RecordedEvent, StreamName, SubscribeFrom, SubscriptionItem};
use crate::store::Subscription;

/// What a backend provides to a stream subscription.
pub(crate) trait StreamFeed: Send + 'static {
    /// Reads the next page of `stream` forwards from `next` (resolved from `from` on the first
    /// call, see [`first_revision`]), returning the revision to read from next time. Must mark
    /// the current commit announcement as seen *before* reading, so a commit that lands after
    /// the read still wakes [`StreamFeed::wait`].
    fn read_page(
        &mut self,
        stream: &StreamName,
        from: SubscribeFrom<u64>,
        next: Option<u64>,
    ) -> impl Future<Output = Result<(u64, Vec<RecordedEvent>)>> + Send;

    /// Waits for a commit announcement or the poll interval; errors once the store is dropped.
    fn wait(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// The first revision to deliver: `next` once known, else what `from` means for a stream whose
/// last revision is `last_revision` (`None`: absent or empty).
pub(crate) fn first_revision(
    next: Option<u64>,
    from: SubscribeFrom<u64>,
    last_revision: Option<u64>,
) -> u64 {
    match (next, from) {
        (Some(next), _) => next,
        (None, SubscribeFrom::Start) => 0,
        (None, SubscribeFrom::After(revision)) => revision.saturating_add(1),
        (None, SubscribeFrom::End) => last_revision.map_or(0, |r| r + 1),
    }
}

/// A catch-up subscription to one stream over `feed`.
pub(crate) fn subscribe_to_stream<F: StreamFeed>(
    feed: F,
    stream: StreamName,
    from: SubscribeFrom<u64>,
) -> Subscription {
    let state = StreamSubscription {
        feed,
        stream,
        from,
        next: None,
        caught_up: false,
        buffer: VecDeque::new(),
        failed: false,
    };
    stream::unfold(state, |mut s| async move {
        s.next().await.map(|item| (item, s))
    })
    .boxed()
}

struct StreamSubscription<F> {
    feed: F,
    stream: StreamName,
    from: SubscribeFrom<u64>,
    /// The next revision to deliver; `None` until the first read resolves `from`.
    next: Option<u64>,
    caught_up: bool,
    buffer: VecDeque<SubscriptionItem>,
    failed: bool,
}

impl<F: StreamFeed> StreamSubscription<F> {
    async fn next(&mut self) -> Option<Result<SubscriptionItem>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.failed {
                return None;
            }
            match self
                .feed
                .read_page(&self.stream, self.from, self.next)
                .await
            {
                Ok((next, page)) => {
                    self.next = Some(next);
                    self.buffer
                        .extend(page.into_iter().map(SubscriptionItem::Event));
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
            if !self.buffer.is_empty() {
                continue;
            }
            if !self.caught_up {
                self.caught_up = true;
                return Some(Ok(SubscriptionItem::CaughtUp));
            }
            if let Err(error) = self.feed.wait().await {
                self.failed = true;
                return Some(Err(error));
            }
        }
    }
}
