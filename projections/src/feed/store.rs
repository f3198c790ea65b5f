//! The embedded feed: the event store's own catch-up subscription to `$all`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use repit_event_store::{
    AllFilter, EventStore, SubscribeFrom, SubscribeToAllOptions, Subscription, SubscriptionItem,
};

use super::{Batch, Feed, FeedError, FeedSpec};

/// A projection's feed straight from the store. Nothing is acknowledged: resuming after the
/// checkpoint is all the store needs.
pub struct StoreFeed {
    spec: FeedSpec,
    subscription: Subscription,
    live: bool,
}

impl std::fmt::Debug for StoreFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFeed")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl StoreFeed {
    /// Subscribes to `$all` after `spec.after`, filtered by the spec's event type prefixes.
    pub fn open(store: Arc<dyn EventStore>, spec: FeedSpec) -> Self {
        let mut filter = AllFilter::default().exclude_system();
        for prefix in &spec.event_type_prefixes {
            filter = filter.event_type_prefix(prefix.clone());
        }
        let from = match (spec.replay, spec.after) {
            (false, Some(position)) => SubscribeFrom::After(position),
            _ => SubscribeFrom::Start,
        };
        let options = SubscribeToAllOptions {
            from,
            ..SubscribeToAllOptions::from_start()
        }
        .filter(filter);
        let subscription = store.subscribe_to_all(options);
        Self {
            spec,
            subscription,
            live: false,
        }
    }
}

#[async_trait]
impl Feed for StoreFeed {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, FeedError> {
        let mut events = Vec::new();
        let mut position = None;
        let mut caught_up = false;
        loop {
            // Block for the first item only; then take what is ready, so one transaction
            // covers a burst and a quiet feed still delivers at once.
            let item = if events.is_empty() && position.is_none() {
                self.subscription.next().await
            } else {
                match self.subscription.next().now_or_never() {
                    Some(item) => item,
                    None => break,
                }
            };
            match item {
                None => return Err(FeedError::Closed),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(SubscriptionItem::Event(event))) => {
                    position = Some(event.position);
                    if self.spec.wants(&event.event_type) {
                        events.push(event);
                    }
                }
                Some(Ok(SubscriptionItem::Checkpoint(at))) => position = Some(at),
                Some(Ok(SubscriptionItem::CaughtUp)) => {
                    self.live = true;
                    caught_up = true;
                    break;
                }
            }
            if events.len() >= max {
                break;
            }
        }
        // Once live, a batch that drained everything ready is at the live end too.
        let caught_up = caught_up || self.live;
        Ok(Batch::new(events, position).at_live_end(caught_up))
    }
}
