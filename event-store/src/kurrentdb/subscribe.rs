//! Catch-up subscriptions on KurrentDB's own: the server reads history, then pushes live events,
//! and reads again from its log when a subscriber falls behind, so a slow consumer loses nothing
//! and nothing is buffered here beyond the item in hand.
//!
//! What this module adds:
//!
//! - [`SubscriptionItem::CaughtUp`], exactly once. Recent servers (EventStoreDB 23.10 and later,
//!   every KurrentDB) send a caught-up message, which is used when it comes. Older servers send
//!   none, so before subscribing the subscription also notes the end of the stream (its last
//!   revision) or of `$all` (its last position), and announces caught-up once the server has
//!   delivered, or for a filtered `$all` checkpointed, that far. Whichever comes first wins. On an
//!   old server a filtered `$all` subscription whose filter matches nothing near the end of
//!   `$all` announces it only at the next checkpoint past that end.
//! - Resuming: KurrentDB's subscriptions already start after the given revision or position.
//!   "From the end" subscribes after the end noted above rather than from the server's end, so
//!   an event appended right after `CaughtUp` was delivered cannot fall between the two.
//! - Filters and checkpoints on `$all`: the server filters on one list (see `filter`) and sends
//!   checkpoints every window; events the client drops count towards the interval too, and a
//!   checkpoint is never sent twice or behind a delivered event.
//! - Tombstones: KurrentDB delivers the `$streamDeleted` marker to a stream subscription before
//!   dropping it; that becomes [`Error::StreamDeleted`]. In `$all` the marker is skipped.

use std::collections::VecDeque;
use std::num::NonZeroU32;

use futures::{StreamExt, stream};
use kurrentdb as kdb;

use super::convert::{Decoded, StreamView, client_position, decode_resolved, failure, position};
use super::filter::{checkpoint_window, plan};
use super::read::{head_of_all, tail};
use crate::error::{Error, Result};
use crate::model::{
    AllFilter, Position, StreamName, SubscribeFrom, SubscribeToAllOptions, SubscriptionItem,
};
use crate::store::Subscription;

/// Where a stream subscription starts on the server, and whether it is caught up already,
/// given the stream's last revision when subscribing.
pub(super) fn stream_start(
    end: Option<u64>,
    from: SubscribeFrom<u64>,
) -> (kdb::StreamPosition<u64>, bool) {
    match from {
        SubscribeFrom::Start => (kdb::StreamPosition::Start, end.is_none()),
        SubscribeFrom::After(revision) => (
            kdb::StreamPosition::Position(revision),
            end.is_none_or(|end| revision >= end),
        ),
        SubscribeFrom::End => (
            end.map_or(kdb::StreamPosition::Start, kdb::StreamPosition::Position),
            true,
        ),
    }
}

/// Where an `$all` subscription starts on the server, and whether it is caught up already,
/// given the position of the newest record in `$all` when subscribing.
pub(super) fn all_start(
    head: Option<Position>,
    from: SubscribeFrom<Position>,
) -> (kdb::StreamPosition<Position>, bool) {
    match from {
        SubscribeFrom::Start => (kdb::StreamPosition::Start, head.is_none()),
        SubscribeFrom::After(position) => (
            kdb::StreamPosition::Position(position),
            head.is_none_or(|head| position >= head),
        ),
        SubscribeFrom::End => (
            head.map_or(kdb::StreamPosition::End, kdb::StreamPosition::Position),
            true,
        ),
    }
}

/// Turns what a stream subscription receives into items.
#[derive(Debug)]
pub(super) struct StreamProgress {
    stream: StreamName,
    /// The last revision when subscribing; `CaughtUp` follows once it was delivered.
    end: Option<u64>,
    caught_up: bool,
}

impl StreamProgress {
    pub(super) fn new(
        stream: StreamName,
        end: Option<u64>,
        caught_up: bool,
        out: &mut VecDeque<SubscriptionItem>,
    ) -> Self {
        if caught_up {
            out.push_back(SubscriptionItem::CaughtUp);
        }
        Self {
            stream,
            end,
            caught_up,
        }
    }

    pub(super) fn on_event(
        &mut self,
        decoded: Decoded,
        out: &mut VecDeque<SubscriptionItem>,
    ) -> Result<()> {
        match decoded {
            Decoded::Event(event) => {
                let revision = event.revision;
                out.push_back(SubscriptionItem::Event(event));
                if self.end.is_some_and(|end| revision >= end) {
                    self.on_caught_up(out);
                }
                Ok(())
            }
            Decoded::Tombstone(_) => Err(Error::StreamDeleted {
                stream: self.stream.clone(),
            }),
            Decoded::Unrepresentable(_) => Ok(()),
        }
    }

    pub(super) fn on_caught_up(&mut self, out: &mut VecDeque<SubscriptionItem>) {
        if !self.caught_up {
            self.caught_up = true;
            out.push_back(SubscriptionItem::CaughtUp);
        }
    }
}

/// Turns what an `$all` subscription receives into items: the client-side part of the filter,
/// checkpoints, and caught-up.
#[derive(Debug)]
pub(super) struct AllProgress {
    filter: AllFilter,
    /// With a non-empty filter, the checkpoint interval.
    interval: Option<NonZeroU32>,
    /// The newest record in `$all` when subscribing; `CaughtUp` follows once the server has
    /// delivered or checkpointed that far.
    head: Option<Position>,
    caught_up: bool,
    /// Events dropped here since the last item delivered.
    passed_over: u64,
    last_event: Option<Position>,
    last_checkpoint: Option<Position>,
}

impl AllProgress {
    pub(super) fn new(
        options: &SubscribeToAllOptions,
        head: Option<Position>,
        caught_up: bool,
        out: &mut VecDeque<SubscriptionItem>,
    ) -> Self {
        if caught_up {
            out.push_back(SubscriptionItem::CaughtUp);
        }
        Self {
            filter: options.filter.clone(),
            interval: (!options.filter.is_empty()).then_some(options.checkpoint_interval),
            head,
            caught_up,
            passed_over: 0,
            last_event: None,
            last_checkpoint: None,
        }
    }

    pub(super) fn on_event(&mut self, decoded: Decoded, out: &mut VecDeque<SubscriptionItem>) {
        let position = decoded.position();
        match decoded {
            Decoded::Event(event)
                if self
                    .filter
                    .matches(event.stream.as_str(), &event.event_type) =>
            {
                out.push_back(SubscriptionItem::Event(event));
                self.last_event = Some(position);
                self.passed_over = 0;
            }
            // Filtered out here, a tombstone marker, or a stream the model cannot name: passed
            // over, and everything before it that matches was delivered.
            _ => {
                self.passed_over += 1;
                if self
                    .interval
                    .is_some_and(|interval| self.passed_over >= u64::from(interval.get()))
                {
                    self.checkpoint(position, out);
                }
            }
        }
        self.reached(position, out);
    }

    pub(super) fn on_checkpoint(
        &mut self,
        position: Position,
        out: &mut VecDeque<SubscriptionItem>,
    ) {
        if self.interval.is_some() {
            self.checkpoint(position, out);
        }
        self.reached(position, out);
    }

    pub(super) fn on_caught_up(&mut self, out: &mut VecDeque<SubscriptionItem>) {
        if !self.caught_up {
            self.caught_up = true;
            out.push_back(SubscriptionItem::CaughtUp);
        }
    }

    fn checkpoint(&mut self, position: Position, out: &mut VecDeque<SubscriptionItem>) {
        let ahead = self.last_checkpoint.is_none_or(|last| position > last)
            && self.last_event.is_none_or(|last| position >= last);
        if ahead {
            out.push_back(SubscriptionItem::Checkpoint(position));
            self.last_checkpoint = Some(position);
            self.passed_over = 0;
        }
    }

    fn reached(&mut self, position: Position, out: &mut VecDeque<SubscriptionItem>) {
        if self.head.is_some_and(|head| position >= head) {
            self.on_caught_up(out);
        }
    }
}

/// Subscribes to one stream as [`crate::EventStore::subscribe_to_stream`] describes.
pub(super) fn to_stream(
    client: kdb::Client,
    stream: StreamName,
    from: SubscribeFrom<u64>,
) -> Subscription {
    let subscription = StreamSubscription {
        client,
        stream,
        from,
        phase: Phase::NotStarted,
        progress: None,
        pending: VecDeque::new(),
    };
    stream::unfold(subscription, |mut subscription| async move {
        subscription.next().await.map(|item| (item, subscription))
    })
    .boxed()
}

enum Phase {
    NotStarted,
    Live(Box<kdb::Subscription>),
    Done,
}

struct StreamSubscription {
    client: kdb::Client,
    stream: StreamName,
    from: SubscribeFrom<u64>,
    phase: Phase,
    progress: Option<StreamProgress>,
    pending: VecDeque<SubscriptionItem>,
}

impl StreamSubscription {
    async fn next(&mut self) -> Option<Result<SubscriptionItem>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            match &mut self.phase {
                Phase::Done => return None,
                Phase::NotStarted => {
                    let end = match tail(&self.client, &self.stream, 1).await {
                        Ok((StreamView::Last(revision), _)) => Some(revision),
                        Ok((StreamView::Absent | StreamView::Hidden, _)) => None,
                        Err(error) => return self.fail(error),
                    };
                    let (start, caught_up) = stream_start(end, self.from);
                    self.progress = Some(StreamProgress::new(
                        self.stream.clone(),
                        end,
                        caught_up,
                        &mut self.pending,
                    ));
                    let options = kdb::SubscribeToStreamOptions::default().start_from(start);
                    let live = self
                        .client
                        .subscribe_to_stream(self.stream.as_str(), &options)
                        .await;
                    self.phase = Phase::Live(Box::new(live));
                }
                Phase::Live(live) => {
                    let Some(progress) = self.progress.as_mut() else {
                        self.phase = Phase::Done;
                        continue;
                    };
                    match live.next_subscription_event().await {
                        Ok(kdb::SubscriptionEvent::EventAppeared(resolved)) => {
                            if let Some(decoded) = decode_resolved(&resolved)
                                && let Err(error) = progress.on_event(decoded, &mut self.pending)
                            {
                                return self.fail(error);
                            }
                        }
                        Ok(kdb::SubscriptionEvent::CaughtUp(_)) => {
                            progress.on_caught_up(&mut self.pending);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            let error = failure(error).into_error(Some(&self.stream));
                            return self.fail(error);
                        }
                    }
                }
            }
        }
    }

    /// Ends the subscription with `error`. Nothing is pending then: items are handed out before
    /// the server is asked for more, and a tombstone marker adds none.
    fn fail(&mut self, error: Error) -> Option<Result<SubscriptionItem>> {
        self.phase = Phase::Done;
        self.pending.clear();
        Some(Err(error))
    }
}

/// Subscribes to `$all` as [`crate::EventStore::subscribe_to_all`] describes.
pub(super) fn to_all(client: kdb::Client, options: SubscribeToAllOptions) -> Subscription {
    let subscription = AllSubscription {
        client,
        options,
        phase: Phase::NotStarted,
        progress: None,
        pending: VecDeque::new(),
    };
    stream::unfold(subscription, |mut subscription| async move {
        subscription.next().await.map(|item| (item, subscription))
    })
    .boxed()
}

struct AllSubscription {
    client: kdb::Client,
    options: SubscribeToAllOptions,
    phase: Phase,
    progress: Option<AllProgress>,
    pending: VecDeque<SubscriptionItem>,
}

impl AllSubscription {
    async fn next(&mut self) -> Option<Result<SubscriptionItem>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            match &mut self.phase {
                Phase::Done => return None,
                Phase::NotStarted => {
                    let head = match head_of_all(&self.client).await {
                        Ok(head) => head,
                        Err(error) => {
                            self.phase = Phase::Done;
                            return Some(Err(error));
                        }
                    };
                    let (start, caught_up) = all_start(head, self.options.from);
                    self.progress = Some(AllProgress::new(
                        &self.options,
                        head,
                        caught_up,
                        &mut self.pending,
                    ));
                    let window = checkpoint_window(self.options.checkpoint_interval);
                    let mut options =
                        kdb::SubscribeToAllOptions::default().position(start.map(client_position));
                    if let Some(filter) = plan(&self.options.filter).server.to_client(Some(window))
                    {
                        options = options.filter(filter);
                    }
                    let live = self.client.subscribe_to_all(&options).await;
                    self.phase = Phase::Live(Box::new(live));
                }
                Phase::Live(live) => {
                    let Some(progress) = self.progress.as_mut() else {
                        self.phase = Phase::Done;
                        continue;
                    };
                    match live.next_subscription_event().await {
                        Ok(kdb::SubscriptionEvent::EventAppeared(resolved)) => {
                            if let Some(decoded) = decode_resolved(&resolved) {
                                progress.on_event(decoded, &mut self.pending);
                            }
                        }
                        Ok(kdb::SubscriptionEvent::Checkpoint(checkpoint)) => {
                            progress.on_checkpoint(position(checkpoint), &mut self.pending);
                        }
                        Ok(kdb::SubscriptionEvent::CaughtUp(_)) => {
                            progress.on_caught_up(&mut self.pending);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            self.phase = Phase::Done;
                            return Some(Err(failure(error).into_error(None)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chrono::Utc;

    use super::*;
    use crate::model::{ContentType, EventId, RecordedEvent};

    fn event(stream: &str, revision: u64, at: u64, event_type: &str) -> Decoded {
        let stream = if stream.starts_with('$') {
            StreamName::system(stream)
        } else {
            StreamName::parse(stream)
        };
        Decoded::Event(RecordedEvent {
            stream: stream.expect("valid stream name"),
            revision,
            position: Position::new(at, at),
            id: EventId::new(),
            event_type: event_type.to_owned(),
            content_type: ContentType::Protobuf,
            data: Bytes::new(),
            metadata: Bytes::new(),
            created: Utc::now(),
        })
    }

    fn kinds(out: &VecDeque<SubscriptionItem>) -> Vec<String> {
        out.iter()
            .map(|item| match item {
                SubscriptionItem::Event(e) => format!("event {}", e.position.commit()),
                SubscriptionItem::CaughtUp => "caught up".to_owned(),
                SubscriptionItem::Checkpoint(p) => format!("checkpoint {}", p.commit()),
            })
            .collect()
    }

    #[test]
    fn stream_subscriptions_start_after_the_revision_and_know_when_they_are_caught_up() {
        use kdb::StreamPosition::{Position as At, Start};
        assert_eq!(stream_start(None, SubscribeFrom::Start), (Start, true));
        assert_eq!(stream_start(Some(4), SubscribeFrom::Start), (Start, false));
        assert_eq!(
            stream_start(Some(4), SubscribeFrom::After(2)),
            (At(2), false)
        );
        assert_eq!(
            stream_start(Some(4), SubscribeFrom::After(4)),
            (At(4), true)
        );
        assert_eq!(stream_start(None, SubscribeFrom::After(4)), (At(4), true));
        // From the end: after the last revision seen, so nothing appended later is missed.
        assert_eq!(stream_start(Some(4), SubscribeFrom::End), (At(4), true));
        assert_eq!(stream_start(None, SubscribeFrom::End), (Start, true));
    }

    #[test]
    fn all_subscriptions_start_after_the_position_and_know_when_they_are_caught_up() {
        use kdb::StreamPosition::{End, Position as At, Start};
        let head = Some(Position::new(50, 50));
        let before = Position::new(10, 10);
        assert_eq!(all_start(head, SubscribeFrom::Start), (Start, false));
        assert_eq!(all_start(None, SubscribeFrom::Start), (Start, true));
        assert_eq!(
            all_start(head, SubscribeFrom::After(before)),
            (At(before), false)
        );
        assert_eq!(
            all_start(head, SubscribeFrom::After(Position::new(50, 50))),
            (At(Position::new(50, 50)), true)
        );
        assert_eq!(
            all_start(head, SubscribeFrom::End),
            (At(Position::new(50, 50)), true)
        );
        assert_eq!(all_start(None, SubscribeFrom::End), (End, true));
    }

    #[test]
    fn a_stream_subscription_is_caught_up_once_after_the_last_revision_seen_at_start() {
        let stream = StreamName::parse("s-1").expect("valid stream name");
        let mut out = VecDeque::new();
        let mut progress = StreamProgress::new(stream.clone(), Some(1), false, &mut out);
        assert!(out.is_empty());
        progress
            .on_event(event("s-1", 0, 10, "t"), &mut out)
            .expect("event");
        progress
            .on_event(event("s-1", 1, 11, "t"), &mut out)
            .expect("event");
        progress.on_caught_up(&mut out);
        progress
            .on_event(event("s-1", 2, 12, "t"), &mut out)
            .expect("event");
        assert_eq!(
            kinds(&out),
            ["event 10", "event 11", "caught up", "event 12"]
        );
        assert!(matches!(
            progress.on_event(Decoded::Tombstone(Position::new(13, 13)), &mut out),
            Err(Error::StreamDeleted { stream: s }) if s == stream
        ));

        let mut out = VecDeque::new();
        let mut fresh = StreamProgress::new(stream, None, false, &mut out);
        fresh.on_caught_up(&mut out);
        fresh.on_caught_up(&mut out);
        assert_eq!(kinds(&out), ["caught up"], "the server's caught-up, once");
    }

    fn options(filter: AllFilter, interval: u32) -> SubscribeToAllOptions {
        SubscribeToAllOptions::from_start()
            .filter(filter)
            .checkpoint_interval(NonZeroU32::new(interval).expect("non-zero"))
    }

    #[test]
    fn events_dropped_here_count_towards_checkpoints() {
        // The server filters on the stream prefix; the event type is checked here.
        let filter = AllFilter::default()
            .stream_prefix("lesson-")
            .event_type_prefix("repit.lesson.");
        let mut out = VecDeque::new();
        let mut progress = AllProgress::new(&options(filter, 2), None, true, &mut out);
        out.clear();
        progress.on_event(event("lesson-1", 0, 10, "repit.lesson.A"), &mut out);
        progress.on_event(event("lesson-1", 1, 11, "other.B"), &mut out);
        progress.on_event(event("lesson-1", 2, 12, "other.B"), &mut out);
        progress.on_event(Decoded::Tombstone(Position::new(13, 13)), &mut out);
        progress.on_event(event("lesson-2", 0, 14, "repit.lesson.A"), &mut out);
        assert_eq!(kinds(&out), ["event 10", "checkpoint 12", "event 14"]);
    }

    #[test]
    fn server_checkpoints_pass_through_only_forwards_and_never_behind_an_event() {
        let filter = AllFilter::default().stream_prefix("lesson-");
        let mut out = VecDeque::new();
        let mut progress = AllProgress::new(&options(filter, 32), None, true, &mut out);
        out.clear();
        progress.on_checkpoint(Position::new(5, 5), &mut out);
        progress.on_checkpoint(Position::new(5, 5), &mut out);
        progress.on_event(event("lesson-1", 0, 10, "t"), &mut out);
        progress.on_checkpoint(Position::new(8, 8), &mut out);
        progress.on_checkpoint(Position::new(10, 10), &mut out);
        progress.on_checkpoint(Position::new(40, 40), &mut out);
        assert_eq!(
            kinds(&out),
            ["checkpoint 5", "event 10", "checkpoint 10", "checkpoint 40"]
        );
    }

    #[test]
    fn an_all_subscription_is_caught_up_when_the_server_reaches_the_head_seen_at_start() {
        let filter = AllFilter::default().stream_prefix("lesson-");
        let head = Some(Position::new(30, 30));
        let mut out = VecDeque::new();
        let mut progress = AllProgress::new(&options(filter.clone(), 32), head, false, &mut out);
        progress.on_event(event("lesson-1", 0, 10, "t"), &mut out);
        progress.on_checkpoint(Position::new(20, 20), &mut out);
        progress.on_checkpoint(Position::new(30, 30), &mut out);
        progress.on_caught_up(&mut out);
        assert_eq!(
            kinds(&out),
            ["event 10", "checkpoint 20", "checkpoint 30", "caught up"]
        );

        // A delivered event at the head is history: it comes before caught-up.
        let mut out = VecDeque::new();
        let mut progress = AllProgress::new(&options(filter, 32), head, false, &mut out);
        progress.on_event(event("lesson-1", 0, 30, "t"), &mut out);
        progress.on_event(event("lesson-1", 1, 31, "t"), &mut out);
        assert_eq!(kinds(&out), ["event 30", "caught up", "event 31"]);
    }

    #[test]
    fn unfiltered_subscriptions_send_no_checkpoints_and_skip_tombstones() {
        let mut out = VecDeque::new();
        let mut progress =
            AllProgress::new(&options(AllFilter::default(), 1), None, true, &mut out);
        progress.on_event(Decoded::Tombstone(Position::new(9, 9)), &mut out);
        progress.on_event(Decoded::Unrepresentable(Position::new(10, 10)), &mut out);
        progress.on_checkpoint(Position::new(11, 11), &mut out);
        progress.on_event(event("$$lesson-1", 0, 12, "$metadata"), &mut out);
        assert_eq!(kinds(&out), ["caught up", "event 12"]);
    }
}
