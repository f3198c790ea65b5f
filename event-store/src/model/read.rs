//! Read and subscription options, the `$all` filter, and subscription items.

use std::num::NonZeroU32;

use super::{Position, RecordedEvent};

/// Which way a read goes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forwards,
    /// Newest first.
    Backwards,
}

/// Where a read begins. The event at `At` is included (EventStoreDB's read semantics).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReadFrom<T> {
    /// The oldest event.
    Start,
    /// The newest event (forwards from `End` reads nothing).
    End,
    /// This revision or position, inclusive.
    At(T),
}

/// Where a subscription begins. Resuming is exclusive: `After(p)` delivers what follows `p`,
/// so a consumer passes the last position it processed and never sees it twice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SubscribeFrom<T> {
    /// All history, then live events.
    Start,
    /// Live events only: [`SubscriptionItem::CaughtUp`] comes first.
    End,
    /// Everything after this revision or position.
    After(T),
}

/// Options for [`crate::EventStore::read_stream`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReadStreamOptions {
    /// Which way to read.
    pub direction: Direction,
    /// Where to start (inclusive).
    pub from: ReadFrom<u64>,
    /// The most events to return.
    pub limit: u64,
}

impl ReadStreamOptions {
    /// The whole stream, oldest first.
    pub const fn forwards() -> Self {
        Self {
            direction: Direction::Forwards,
            from: ReadFrom::Start,
            limit: u64::MAX,
        }
    }

    /// The whole stream, newest first.
    pub const fn backwards() -> Self {
        Self {
            direction: Direction::Backwards,
            from: ReadFrom::End,
            limit: u64::MAX,
        }
    }

    /// Starts at this revision (inclusive).
    #[must_use]
    pub const fn from_revision(mut self, revision: u64) -> Self {
        self.from = ReadFrom::At(revision);
        self
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub const fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }
}

impl Default for ReadStreamOptions {
    fn default() -> Self {
        Self::forwards()
    }
}

/// Options for [`crate::EventStore::read_all`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReadAllOptions {
    /// Which way to read.
    pub direction: Direction,
    /// Where to start (inclusive).
    pub from: ReadFrom<Position>,
    /// The most events to return (counted after filtering).
    pub limit: u64,
    /// Which events to return.
    pub filter: AllFilter,
}

impl ReadAllOptions {
    /// All of `$all`, oldest first.
    pub fn forwards() -> Self {
        Self {
            direction: Direction::Forwards,
            from: ReadFrom::Start,
            limit: u64::MAX,
            filter: AllFilter::default(),
        }
    }

    /// All of `$all`, newest first.
    pub fn backwards() -> Self {
        Self {
            direction: Direction::Backwards,
            from: ReadFrom::End,
            ..Self::forwards()
        }
    }

    /// Starts at this position (inclusive).
    #[must_use]
    pub fn from_position(mut self, position: Position) -> Self {
        self.from = ReadFrom::At(position);
        self
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Returns only events that pass `filter`.
    #[must_use]
    pub fn filter(mut self, filter: AllFilter) -> Self {
        self.filter = filter;
        self
    }
}

impl Default for ReadAllOptions {
    fn default() -> Self {
        Self::forwards()
    }
}

/// A server-side filter on `$all`. The default passes everything.
///
/// An event passes when its stream name starts with one of `stream_prefixes` (or the list is
/// empty) **and** its type starts with one of `event_type_prefixes` (or the list is empty), and,
/// with `exclude_system`, neither its stream nor its type starts with `$`. KurrentDB filters on one
/// of the two lists natively; its backend applies the other one client-side.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct AllFilter {
    /// Stream name prefixes (for example a category followed by `-`).
    pub stream_prefixes: Vec<String>,
    /// Event type prefixes (for example `repit.lesson.v1.`).
    pub event_type_prefixes: Vec<String>,
    /// Leaves out system streams and system event types (both start with `$`).
    pub exclude_system: bool,
}

impl AllFilter {
    /// Adds a stream name prefix.
    #[must_use]
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefixes.push(prefix.into());
        self
    }

    /// Adds an event type prefix.
    #[must_use]
    pub fn event_type_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.event_type_prefixes.push(prefix.into());
        self
    }

    /// Leaves out system streams and system event types.
    #[must_use]
    pub fn exclude_system(mut self) -> Self {
        self.exclude_system = true;
        self
    }

    /// Whether the filter passes everything (so subscriptions send no checkpoints).
    pub fn is_empty(&self) -> bool {
        self.stream_prefixes.is_empty()
            && self.event_type_prefixes.is_empty()
            && !self.exclude_system
    }

    /// Whether an event of type `event_type` in stream `stream` passes. The reference semantics,
    /// for backends that filter on the client.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        let any_prefix = |prefixes: &[String], s: &str| {
            prefixes.is_empty() || prefixes.iter().any(|p| s.starts_with(p.as_str()))
        };
        any_prefix(&self.stream_prefixes, stream)
            && any_prefix(&self.event_type_prefixes, event_type)
            && !(self.exclude_system && (stream.starts_with('$') || event_type.starts_with('$')))
    }
}

/// Options for [`crate::EventStore::subscribe_to_all`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SubscribeToAllOptions {
    /// Where to start (exclusive).
    pub from: SubscribeFrom<Position>,
    /// Which events to deliver.
    pub filter: AllFilter,
    /// With a non-empty filter, a [`SubscriptionItem::Checkpoint`] follows once at least this
    /// many events were passed over since the last event or checkpoint delivered, so a consumer
    /// of a rare event type can still record progress. KurrentDB rounds it up to a multiple of
    /// 32 (its checkpoint window).
    pub checkpoint_interval: NonZeroU32,
}

/// The checkpoint interval EventStoreDB uses by default.
pub const DEFAULT_CHECKPOINT_INTERVAL: NonZeroU32 = match NonZeroU32::new(32) {
    Some(interval) => interval,
    None => unreachable!(),
};

impl SubscribeToAllOptions {
    /// All of `$all` from the start, unfiltered.
    pub fn from_start() -> Self {
        Self {
            from: SubscribeFrom::Start,
            filter: AllFilter::default(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }

    /// Live events only.
    pub fn from_end() -> Self {
        Self {
            from: SubscribeFrom::End,
            ..Self::from_start()
        }
    }

    /// Everything after `position` (a checkpoint or the last event processed).
    pub fn after(position: Position) -> Self {
        Self {
            from: SubscribeFrom::After(position),
            ..Self::from_start()
        }
    }

    /// Delivers only events that pass `filter`.
    #[must_use]
    pub fn filter(mut self, filter: AllFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the checkpoint interval.
    #[must_use]
    pub fn checkpoint_interval(mut self, interval: NonZeroU32) -> Self {
        self.checkpoint_interval = interval;
        self
    }
}

impl Default for SubscribeToAllOptions {
    fn default() -> Self {
        Self::from_start()
    }
}

/// What a catch-up subscription delivers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SubscriptionItem {
    /// The next event.
    Event(RecordedEvent),
    /// Every event that existed when the subscription started has been delivered; what follows
    /// is live. Sent exactly once.
    CaughtUp,
    /// Filtered `$all` subscriptions only: every event up to and including this position that
    /// passes the filter has been delivered, so resuming after it loses nothing.
    Checkpoint(Position),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_needs_both_lists_to_match() {
        let filter = AllFilter::default()
            .stream_prefix("lesson-")
            .event_type_prefix("repit.lesson.");
        assert!(filter.matches("lesson-1", "repit.lesson.v1.LessonScheduled"));
        assert!(!filter.matches("tutor-1", "repit.lesson.v1.LessonScheduled"));
        assert!(!filter.matches("lesson-1", "repit.tutor.v1.TutorRegistered"));
        assert!(AllFilter::default().matches("$$x", "$metadata"));
        assert!(
            !AllFilter::default()
                .exclude_system()
                .matches("a", "$metadata")
        );
        assert!(!AllFilter::default().exclude_system().matches("$ce-a", "x"));
    }
}
