//! Stream and `$all` reads, lazy and page by page as the consumer pulls, plus the small reads the
//! writes and subscriptions need (a stream's newest events, the head of `$all`).

use futures::{StreamExt, stream};
use kurrentdb as kdb;

use super::convert::{
    Decoded, Failure, StoredId, StreamView, client_position, decode_resolved, event_position,
    failure,
};
use super::filter::plan;
use crate::error::{Error, Result};
use crate::model::{
    AllFilter, Direction, Position, ReadAllOptions, ReadFrom, ReadStreamOptions, RecordedEvent,
    StreamName,
};
use crate::store::EventStream;

/// Events asked for per `$all` page when the client filters part of what the server sends, so a
/// selective client-side filter does not cost a round trip per event.
const ALL_PAGE: u64 = 1024;

fn usize_count(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

fn original_position(resolved: &kdb::ResolvedEvent) -> Option<Position> {
    resolved
        .link
        .as_ref()
        .or(resolved.event.as_ref())
        .map(|record| event_position(record.position))
}

/// Reads a stream as [`crate::EventStore::read_stream`] describes.
pub(super) fn read_stream(
    client: kdb::Client,
    stream: StreamName,
    options: ReadStreamOptions,
) -> EventStream {
    if options.limit == 0
        || (options.direction == Direction::Forwards && options.from == ReadFrom::End)
    {
        return stream::empty().boxed();
    }
    let reader = StreamReader {
        client,
        stream,
        options,
        state: StreamState::NotStarted,
    };
    stream::unfold(reader, |mut reader| async move {
        reader.next().await.map(|item| (item, reader))
    })
    .boxed()
}

fn client_stream_options(options: &ReadStreamOptions) -> kdb::ReadStreamOptions {
    let start = match options.from {
        ReadFrom::Start => kdb::StreamPosition::Start,
        ReadFrom::End => kdb::StreamPosition::End,
        ReadFrom::At(revision) => kdb::StreamPosition::Position(revision),
    };
    // `position` picks a direction for `Start` and `End`; the one asked for is set after it.
    let read = kdb::ReadStreamOptions::default().position(start);
    let read = match options.direction {
        Direction::Forwards => read.forwards(),
        Direction::Backwards => read.backwards(),
    };
    read.max_count(usize_count(options.limit))
}

struct StreamReader {
    client: kdb::Client,
    stream: StreamName,
    options: ReadStreamOptions,
    state: StreamState,
}

enum StreamState {
    NotStarted,
    Reading(Box<kdb::ReadStream>),
    Done,
}

impl StreamReader {
    async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            match &mut self.state {
                StreamState::Done => return None,
                StreamState::NotStarted => {
                    let options = client_stream_options(&self.options);
                    match self
                        .client
                        .read_stream(self.stream.as_str(), &options)
                        .await
                    {
                        Ok(read) => self.state = StreamState::Reading(Box::new(read)),
                        Err(error) => return self.fail(error),
                    }
                }
                StreamState::Reading(read) => match read.next().await {
                    Ok(Some(resolved)) => match decode_resolved(&resolved) {
                        Some(Decoded::Event(event)) => return Some(Ok(event)),
                        Some(Decoded::Tombstone(_)) => {
                            self.state = StreamState::Done;
                            return Some(Err(Error::StreamDeleted {
                                stream: self.stream.clone(),
                            }));
                        }
                        Some(Decoded::Unrepresentable(_)) | None => {}
                    },
                    Ok(None) => self.state = StreamState::Done,
                    Err(error) => return self.fail(error),
                },
            }
        }
    }

    fn fail(&mut self, error: kdb::Error) -> Option<Result<RecordedEvent>> {
        self.state = StreamState::Done;
        match failure(error) {
            // An absent or soft-deleted stream reads as empty.
            Failure::NotFound => None,
            other => Some(Err(other.into_error(Some(&self.stream)))),
        }
    }
}

/// Reads `$all` as [`crate::EventStore::read_all`] describes.
///
/// Page by page: each page is one server read from where the previous one stopped, so events
/// the client filters out or hides (tombstone markers) never make a limit come up short.
/// KurrentDB's backward read from a position leaves out the event at that position, so a
/// backward read from a position first reads that event forwards.
pub(super) fn read_all(client: kdb::Client, options: ReadAllOptions) -> EventStream {
    if options.limit == 0
        || (options.direction == Direction::Forwards && options.from == ReadFrom::End)
    {
        return stream::empty().boxed();
    }
    let plan = plan(&options.filter);
    let phase = match (options.direction, options.from) {
        (Direction::Backwards, ReadFrom::Start) => AllPhase::Pivot(None),
        (Direction::Backwards, ReadFrom::At(position)) => AllPhase::Pivot(Some(position)),
        (_, from) => AllPhase::Page {
            from: match from {
                ReadFrom::Start => kdb::StreamPosition::Start,
                ReadFrom::End => kdb::StreamPosition::End,
                ReadFrom::At(position) => kdb::StreamPosition::Position(client_position(position)),
            },
            bound: None,
        },
    };
    let reader = AllReader {
        client,
        server_filter: plan.server.to_client(None),
        exact: plan.exact,
        filter: options.filter,
        direction: options.direction,
        remaining: options.limit,
        phase,
    };
    stream::unfold(reader, |mut reader| async move {
        reader.next().await.map(|item| (item, reader))
    })
    .boxed()
}

/// How many events a page asks the server for. With an exact server-side filter every event it
/// sends counts towards the limit; a continuation page starts with the last event seen, so it
/// asks for one more.
fn page_size(remaining: u64, exact: bool, continuation: bool) -> u64 {
    let wanted = if exact {
        remaining.min(ALL_PAGE)
    } else {
        ALL_PAGE
    };
    wanted.saturating_add(u64::from(continuation))
}

/// Whether a continuation page's event was seen on an earlier page (or, backwards from a
/// position, is that position's event, read first).
fn already_seen(direction: Direction, bound: Option<Position>, position: Position) -> bool {
    bound.is_some_and(|bound| match direction {
        Direction::Forwards => position <= bound,
        Direction::Backwards => position >= bound,
    })
}

struct AllReader {
    client: kdb::Client,
    filter: AllFilter,
    server_filter: Option<kdb::SubscriptionFilter>,
    exact: bool,
    direction: Direction,
    remaining: u64,
    phase: AllPhase,
}

enum AllPhase {
    /// Backwards from this position (`None`: from the oldest event): the event there first.
    Pivot(Option<Position>),
    /// The next page starts here; events at or beyond `bound` (in the read's direction) were
    /// already seen.
    Page {
        from: kdb::StreamPosition<kdb::Position>,
        bound: Option<Position>,
    },
    Reading {
        read: Box<kdb::ReadStream>,
        requested: u64,
        received: u64,
        bound: Option<Position>,
        last: Option<Position>,
    },
    Done,
}

impl AllReader {
    async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            if self.remaining == 0 {
                self.phase = AllPhase::Done;
            }
            match &mut self.phase {
                AllPhase::Done => return None,
                AllPhase::Pivot(at) => {
                    let at = *at;
                    match self.pivot(at).await {
                        Ok((event, next)) => {
                            self.phase = next;
                            if let Some(event) = event {
                                self.remaining -= 1;
                                return Some(Ok(event));
                            }
                        }
                        Err(error) => return self.fail(error),
                    }
                }
                AllPhase::Page { from, bound } => {
                    let (from, bound) = (*from, *bound);
                    let requested = page_size(self.remaining, self.exact, bound.is_some());
                    let mut options = kdb::ReadAllOptions::default().position(from);
                    options = match self.direction {
                        Direction::Forwards => options.forwards(),
                        Direction::Backwards => options.backwards(),
                    };
                    options = options.max_count(usize_count(requested));
                    if let Some(filter) = &self.server_filter {
                        options = options.filter(filter.clone());
                    }
                    match self.client.read_all(&options).await {
                        Ok(read) => {
                            self.phase = AllPhase::Reading {
                                read: Box::new(read),
                                requested,
                                received: 0,
                                bound,
                                last: None,
                            };
                        }
                        Err(error) => return self.fail(error),
                    }
                }
                AllPhase::Reading {
                    read,
                    requested,
                    received,
                    bound,
                    last,
                } => match read.next().await {
                    Ok(Some(resolved)) => {
                        *received += 1;
                        let Some(position) = original_position(&resolved) else {
                            continue;
                        };
                        *last = Some(position);
                        if already_seen(self.direction, *bound, position) {
                            continue;
                        }
                        if let Some(event) = self.deliverable(decode_resolved(&resolved)) {
                            self.remaining -= 1;
                            return Some(Ok(event));
                        }
                    }
                    Ok(None) => {
                        // A full page may stop short of the end of `$all`: the next one starts
                        // at its last record. A short page reached the end.
                        self.phase = match *last {
                            Some(last) if *received >= *requested => AllPhase::Page {
                                from: kdb::StreamPosition::Position(client_position(last)),
                                bound: Some(last),
                            },
                            _ => AllPhase::Done,
                        };
                    }
                    Err(error) => return self.fail(error),
                },
            }
        }
    }

    /// Reads the event at `at` (the oldest event for `None`) and says where the backward read
    /// continues.
    async fn pivot(
        &mut self,
        at: Option<Position>,
    ) -> Result<(Option<RecordedEvent>, AllPhase), kdb::Error> {
        let found = record_at(&self.client, at).await?;
        let event = self.deliverable(found);
        let next = match at {
            // From the oldest event there is nothing further back.
            None => AllPhase::Done,
            Some(at) => AllPhase::Page {
                from: kdb::StreamPosition::Position(client_position(at)),
                bound: Some(at),
            },
        };
        Ok((event, next))
    }

    fn deliverable(&self, decoded: Option<Decoded>) -> Option<RecordedEvent> {
        match decoded? {
            Decoded::Event(event)
                if self
                    .filter
                    .matches(event.stream.as_str(), &event.event_type) =>
            {
                Some(event)
            }
            _ => None,
        }
    }

    fn fail(&mut self, error: kdb::Error) -> Option<Result<RecordedEvent>> {
        self.phase = AllPhase::Done;
        Some(Err(failure(error).into_error(None)))
    }
}

/// The record at `at` in `$all` (the oldest record for `None`), if there is one exactly there.
async fn record_at(
    client: &kdb::Client,
    at: Option<Position>,
) -> Result<Option<Decoded>, kdb::Error> {
    let from = at.map_or(kdb::StreamPosition::Start, |p| {
        kdb::StreamPosition::Position(client_position(p))
    });
    let options = kdb::ReadAllOptions::default()
        .position(from)
        .forwards()
        .max_count(1);
    let mut read = client.read_all(&options).await?;
    let found = read.next().await?;
    let here = found
        .as_ref()
        .and_then(original_position)
        .is_some_and(|p| at.is_none_or(|at| p == at));
    Ok(found.filter(|_| here).as_ref().and_then(decode_resolved))
}

/// The newest `count` events of a stream (oldest first, ids and places only) and what the read
/// says about the stream. A tombstoned stream is [`Error::StreamDeleted`].
pub(super) async fn tail(
    client: &kdb::Client,
    stream: &StreamName,
    count: u64,
) -> Result<(StreamView, Vec<StoredId>)> {
    let options = kdb::ReadStreamOptions::default()
        .position(kdb::StreamPosition::End)
        .backwards()
        .max_count(usize_count(count.max(1)));
    let read = match client.read_stream(stream.as_str(), &options).await {
        Ok(read) => read,
        Err(error) => return tail_failure(error, stream),
    };
    collect_tail(read, stream).await
}

async fn collect_tail(
    mut read: kdb::ReadStream,
    stream: &StreamName,
) -> Result<(StreamView, Vec<StoredId>)> {
    let mut stored = Vec::new();
    loop {
        match read.next().await {
            Ok(Some(resolved)) => match decode_resolved(&resolved) {
                Some(Decoded::Event(event)) => stored.push(StoredId {
                    id: event.id,
                    revision: event.revision,
                    position: event.position,
                }),
                Some(Decoded::Tombstone(_)) => {
                    return Err(Error::StreamDeleted {
                        stream: stream.clone(),
                    });
                }
                Some(Decoded::Unrepresentable(_)) | None => {}
            },
            Ok(None) => break,
            Err(error) => return tail_failure(error, stream),
        }
    }
    stored.reverse();
    let view = stored
        .last()
        .map_or(StreamView::Hidden, |last| StreamView::Last(last.revision));
    Ok((view, stored))
}

fn tail_failure(error: kdb::Error, stream: &StreamName) -> Result<(StreamView, Vec<StoredId>)> {
    match failure(error) {
        Failure::NotFound => Ok((StreamView::Absent, Vec::new())),
        other => Err(other.into_error(Some(stream))),
    }
}

/// The newest event of a stream, if any is visible.
pub(super) async fn last_event(
    client: &kdb::Client,
    stream: &StreamName,
) -> Result<Option<RecordedEvent>, Failure> {
    let options = kdb::ReadStreamOptions::default()
        .position(kdb::StreamPosition::End)
        .backwards()
        .max_count(1);
    let found = async {
        let mut read = client.read_stream(stream.as_str(), &options).await?;
        read.next().await
    };
    match found.await {
        Ok(found) => Ok(match found.as_ref().and_then(decode_resolved) {
            Some(Decoded::Event(event)) => Some(event),
            Some(Decoded::Tombstone(_)) => return Err(Failure::Deleted),
            Some(Decoded::Unrepresentable(_)) | None => None,
        }),
        Err(error) => Err(failure(error)),
    }
}

/// The position of the newest record in `$all`, if there is one.
pub(super) async fn head_of_all(client: &kdb::Client) -> Result<Option<Position>> {
    let options = kdb::ReadAllOptions::default()
        .position(kdb::StreamPosition::End)
        .backwards()
        .max_count(1);
    let head = async {
        let mut read = client.read_all(&options).await?;
        Ok::<_, kdb::Error>(read.next().await?.as_ref().and_then(original_position))
    };
    head.await.map_err(|error| failure(error).into_error(None))
}

/// The position of the event at `revision` of `stream`, for an append the server acknowledged
/// without one.
pub(super) async fn position_of(
    client: &kdb::Client,
    stream: &StreamName,
    revision: u64,
) -> Result<Position> {
    let options = kdb::ReadStreamOptions::default()
        .position(kdb::StreamPosition::Position(revision))
        .forwards()
        .max_count(1);
    let found = async {
        let mut read = client.read_stream(stream.as_str(), &options).await?;
        Ok::<_, kdb::Error>(read.next().await?.as_ref().and_then(original_position))
    };
    match found.await {
        Ok(Some(position)) => Ok(position),
        Ok(None) => Err(Error::unavailable(format!(
            "kurrentdb acknowledged an append to {stream} without a position, and event \
             {revision} cannot be read back to find it"
        ))),
        Err(error) => Err(failure(error).into_error(Some(stream))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_ask_for_what_is_left_unless_the_client_filters_too() {
        assert_eq!(page_size(5, true, false), 5);
        assert_eq!(
            page_size(5, true, true),
            6,
            "a continuation repeats the last event"
        );
        assert_eq!(page_size(u64::MAX, true, false), ALL_PAGE);
        assert_eq!(page_size(5, false, false), ALL_PAGE);
        assert_eq!(page_size(5, false, true), ALL_PAGE + 1);
    }

    #[test]
    fn continuation_pages_skip_what_was_already_seen_in_their_direction() {
        let bound = Some(Position::new(10, 10));
        let (before, at, after) = (
            Position::new(9, 9),
            Position::new(10, 10),
            Position::new(11, 11),
        );
        assert!(already_seen(Direction::Forwards, bound, before));
        assert!(already_seen(Direction::Forwards, bound, at));
        assert!(!already_seen(Direction::Forwards, bound, after));
        assert!(!already_seen(Direction::Backwards, bound, before));
        assert!(already_seen(Direction::Backwards, bound, at));
        assert!(already_seen(Direction::Backwards, bound, after));
        assert!(!already_seen(Direction::Forwards, None, before));
    }
}
