//! Every translation between RepitBot's model and the KurrentDB client's types: expected
//! revisions, positions, event data, recorded events and errors. Pure functions, so each rule is
//! unit-tested without a server.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kurrentdb as kdb;
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::error::{Error, InvalidEventReason, Result};
use crate::model::{
    AppendResult, ContentType, CurrentRevision, EventId, ExpectedRevision, NewEvent, Position,
    RecordedEvent, StreamMetadata, StreamName,
};

/// The event type KurrentDB writes into a stream when it is tombstoned. The model has no such
/// event: reads and subscriptions turn it into [`Error::StreamDeleted`] or skip it in `$all`.
pub(super) const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";

/// The event type of stream metadata in `$$<stream>`.
pub(super) const METADATA_EVENT_TYPE: &str = "$metadata";

/// KurrentDB's four expectations are ours, one for one.
pub(super) fn stream_state(expected: ExpectedRevision) -> kdb::StreamState {
    match expected {
        ExpectedRevision::Any => kdb::StreamState::Any,
        ExpectedRevision::NoStream => kdb::StreamState::NoStream,
        ExpectedRevision::StreamExists => kdb::StreamState::StreamExists,
        ExpectedRevision::Exact(revision) => kdb::StreamState::StreamRevision(revision),
    }
}

pub(super) fn current_revision(current: kdb::CurrentRevision) -> CurrentRevision {
    match current {
        kdb::CurrentRevision::Current(revision) => CurrentRevision::Current(revision),
        kdb::CurrentRevision::NoStream => CurrentRevision::NoStream,
    }
}

/// `Position` is KurrentDB's (commit, prepare) pair, in the same order, so the two compare alike.
pub(super) fn position(position: kdb::Position) -> Position {
    Position::new(position.commit, position.prepare)
}

pub(super) fn client_position(position: Position) -> kdb::Position {
    kdb::Position {
        commit: position.commit(),
        prepare: position.prepare(),
    }
}

/// A position the server actually reported. The client turns the server's "no position" (an
/// idempotent append it recognised) into `(0, 0)`, and the server's `-1` arrives as `u64::MAX`;
/// no event lives at either, because the log starts with the server's own records.
pub(super) fn known_position(position: kdb::Position) -> Option<Position> {
    let unknown = (position.commit == 0 && position.prepare == 0)
        || position.commit == u64::MAX
        || position.prepare == u64::MAX;
    (!unknown).then(|| self::position(position))
}

/// The result of an append the server acknowledged, or `None` when it acknowledged it without a
/// position (it recognised a retry itself); the caller then reads the position back.
pub(super) fn append_result(written: &kdb::WriteResult) -> Option<AppendResult> {
    known_position(written.position).map(|position| AppendResult {
        next_expected_revision: written.next_expected_version,
        position,
    })
}

/// Writes JSON text into the client's payload exactly as given.
///
/// The client only marks an event as JSON (`content-type: application/json`) through
/// `EventData::json`, which serializes a value with `serde_json`. Re-serializing would change
/// the bytes (whitespace, number formatting, key order) and cannot express an empty payload,
/// which the model allows; `serde_json::value::RawValue` trims whitespace and refuses empty text.
/// So this emits the text through the raw-value protocol `RawValue` itself uses (feature
/// `raw_value`), which `serde_json`'s serializer writes verbatim. The text was checked to be JSON
/// by [`crate::limits::check_append`]; `verbatim_json_is_written_unchanged` pins the behaviour.
struct VerbatimJson<'a>(&'a str);

/// `serde_json`'s marker for raw JSON (`serde_json::value::RawValue`'s serialization).
const RAW_JSON_TOKEN: &str = "$serde_json::private::RawValue";

impl Serialize for VerbatimJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut raw = serializer.serialize_struct(RAW_JSON_TOKEN, 1)?;
        raw.serialize_field(RAW_JSON_TOKEN, self.0)?;
        raw.end()
    }
}

fn json_event_data(event_type: &str, json: &str) -> Result<kdb::EventData, serde_json::Error> {
    kdb::EventData::json(event_type, &VerbatimJson(json))
}

/// The client's form of an event to append: id, type, data with its content type (`Json` as
/// `application/json`, which KurrentDB stores as its "is JSON" flag; `Protobuf` as
/// `application/octet-stream`), and the metadata bytes as KurrentDB's custom metadata.
pub(super) fn event_data(index: usize, event: NewEvent) -> Result<kdb::EventData> {
    let not_json = |reason: String| Error::InvalidEvent {
        index,
        reason: InvalidEventReason::NotJson(reason),
    };
    let data = match event.content_type {
        ContentType::Json => {
            let text = std::str::from_utf8(&event.data).map_err(|e| not_json(e.to_string()))?;
            json_event_data(&event.event_type, text).map_err(|e| not_json(e.to_string()))?
        }
        ContentType::Protobuf => kdb::EventData::binary(&event.event_type, event.data),
    };
    let data = data.id(event.id.as_uuid());
    Ok(if event.metadata.is_empty() {
        data
    } else {
        data.metadata(event.metadata)
    })
}

/// Stream metadata as the `$metadata` event of `$$<stream>`, in EventStoreDB's JSON form
/// ([`StreamMetadata::to_json`]). Written verbatim rather than through the client's own
/// `StreamMetadata`, whose serializer writes `$maxAge` in milliseconds where the server reads
/// seconds.
pub(super) fn metadata_event(metadata: &StreamMetadata) -> Result<kdb::EventData> {
    json_event_data(METADATA_EVENT_TYPE, &metadata.to_json())
        .map_err(|e| Error::Corrupt(format!("failed to encode stream metadata: {e}")))
}

/// KurrentDB's creation time: .NET ticks (100 ns) since the Unix epoch, in the `created` entry of
/// the event's system metadata. The client's own `created` field drops everything below a second,
/// so it is read from the ticks, to the microsecond like every other backend.
pub(super) fn created_from_ticks(ticks: &str) -> Option<DateTime<Utc>> {
    let ticks: i64 = ticks.trim().parse().ok()?;
    DateTime::from_timestamp_micros(ticks / 10)
}

/// The parts of a recorded event the conversion needs, taken from the client's
/// `kurrentdb::RecordedEvent` (whose stream field cannot be built outside the client, so the
/// tests build these instead).
#[derive(Debug)]
pub(super) struct RawEvent<'a> {
    pub(super) stream: &'a str,
    pub(super) id: uuid::Uuid,
    pub(super) revision: u64,
    pub(super) position: kdb::Position,
    pub(super) event_type: String,
    pub(super) is_json: bool,
    pub(super) data: Bytes,
    pub(super) custom_metadata: Bytes,
    pub(super) system_metadata: &'a HashMap<String, String>,
    pub(super) created: DateTime<Utc>,
}

impl<'a> RawEvent<'a> {
    pub(super) fn from_client(event: &'a kdb::RecordedEvent) -> Self {
        Self {
            stream: event.stream_id(),
            id: event.id,
            revision: event.revision,
            position: event.position,
            event_type: event.event_type.clone(),
            is_json: event.is_json,
            data: event.data.clone(),
            custom_metadata: event.custom_metadata.clone(),
            system_metadata: &event.metadata,
            created: event.created,
        }
    }
}

/// A record read from KurrentDB, in the model's terms.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) enum Decoded {
    /// An event of the model.
    Event(RecordedEvent),
    /// The marker KurrentDB appends to a stream it tombstones: not an event of the model.
    Tombstone(Position),
    /// A record whose stream name the model cannot hold (longer than 255 bytes, with control
    /// characters: written by another tool, or the `$$` metadata stream of a 254-byte name).
    Unrepresentable(Position),
}

impl Decoded {
    pub(super) fn position(&self) -> Position {
        match self {
            Self::Event(event) => event.position,
            Self::Tombstone(position) | Self::Unrepresentable(position) => *position,
        }
    }
}

/// An event's place in `$all`. Servers before KurrentDB send no commit position (`-1`, arriving
/// as `u64::MAX`) for events read from a stream; every event appended through gRPC commits
/// itself, at its own log position, so its `$all` position is that position twice.
pub(super) fn event_position(recorded: kdb::Position) -> Position {
    if recorded.commit == u64::MAX && recorded.prepare != u64::MAX {
        Position::new(recorded.prepare, recorded.prepare)
    } else {
        position(recorded)
    }
}

pub(super) fn decode(raw: RawEvent<'_>) -> Decoded {
    let position = event_position(raw.position);
    if raw.event_type == TOMBSTONE_EVENT_TYPE {
        return Decoded::Tombstone(position);
    }
    let stream = if raw.stream.starts_with('$') {
        StreamName::system(raw.stream)
    } else {
        StreamName::parse(raw.stream)
    };
    let Ok(stream) = stream else {
        tracing::warn!(
            stream = raw.stream,
            %position,
            "skipping a kurrentdb event whose stream name the event store cannot represent"
        );
        return Decoded::Unrepresentable(position);
    };
    let created = raw
        .system_metadata
        .get("created")
        .and_then(|ticks| created_from_ticks(ticks))
        .unwrap_or(raw.created);
    Decoded::Event(RecordedEvent {
        stream,
        revision: raw.revision,
        position,
        id: EventId::from_uuid(raw.id),
        event_type: raw.event_type,
        content_type: if raw.is_json {
            ContentType::Json
        } else {
            ContentType::Protobuf
        },
        data: raw.data,
        metadata: raw.custom_metadata,
        created,
    })
}

/// The record a read or subscription delivered: links are not resolved, so it is the record
/// stored in the stream read (the client's "original event").
pub(super) fn decode_resolved(resolved: &kdb::ResolvedEvent) -> Option<Decoded> {
    let record = resolved.link.as_ref().or(resolved.event.as_ref())?;
    Some(decode(RawEvent::from_client(record)))
}

/// A client error, sorted by what the store does about it.
#[derive(Debug)]
pub(super) enum Failure {
    /// The expectation did not hold; the server's view of the stream when it is known.
    WrongExpectedVersion(Option<CurrentRevision>),
    /// The stream does not exist, or was soft-deleted (reads report both so).
    NotFound,
    /// The stream was tombstoned.
    Deleted,
    /// The server refused the batch as too large; its limit in bytes.
    TooLarge(Option<usize>),
    /// Anything else, already translated.
    Other(Error),
}

impl Failure {
    /// The error for a failure no caller handled. `stream` names the stream a tombstone error is
    /// about.
    pub(super) fn into_error(self, stream: Option<&StreamName>) -> Error {
        match (self, stream) {
            (Failure::Other(error), _) => error,
            (Failure::Deleted, Some(stream)) => Error::StreamDeleted {
                stream: stream.clone(),
            },
            (unexpected, _) => Error::unavailable(format!(
                "kurrentdb answered with an unexpected outcome: {unexpected:?}"
            )),
        }
    }
}

/// gRPC status codes (fixed by the gRPC specification), compared as numbers because the client's
/// `tonic` is not this workspace's.
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_FAILED_PRECONDITION: i32 = 9;

pub(super) fn failure(error: kdb::Error) -> Failure {
    match error {
        kdb::Error::WrongExpectedVersion { current, .. } => {
            Failure::WrongExpectedVersion(Some(current_revision(current)))
        }
        kdb::Error::ResourceNotFound => Failure::NotFound,
        kdb::Error::ResourceDeleted => Failure::Deleted,
        kdb::Error::Grpc { code, ref message } => {
            grpc_failure(code as i32, message).unwrap_or_else(|| Failure::Other(unavailable(error)))
        }
        kdb::Error::InternalParsingError(message) => Failure::Other(Error::Corrupt(format!(
            "kurrentdb sent data that does not decode: {message}"
        ))),
        // Access denied means the configured credentials do not allow the operation: an
        // operator's problem, not the caller's, and retryable once fixed, like the server being
        // down, overloaded, not the leader, or too slow.
        other => Failure::Other(unavailable(other)),
    }
}

fn unavailable(error: kdb::Error) -> Error {
    Error::unavailable(error)
}

/// Errors the client leaves as a bare gRPC status. Deletes and tombstones report a wrong expected
/// version this way (the revisions are only in the message), and the server's own size limit
/// arrives as an invalid argument.
pub(super) fn grpc_failure(code: i32, message: &str) -> Option<Failure> {
    match code {
        GRPC_FAILED_PRECONDITION if message.contains("WrongExpectedVersion") => Some(
            Failure::WrongExpectedVersion(actual_version_in_message(message)),
        ),
        GRPC_INVALID_ARGUMENT if message.contains("Maximum Append") => {
            Some(Failure::TooLarge(number_after(message, "Size of ")))
        }
        _ => None,
    }
}

/// The actual revision in KurrentDB's message "… Expected version: 1, Actual version: 2" (`-1`:
/// no stream).
fn actual_version_in_message(message: &str) -> Option<CurrentRevision> {
    let (_, rest) = message.split_once("Actual version:")?;
    let text: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    match text.parse::<i64>().ok()? {
        -1 => Some(CurrentRevision::NoStream),
        revision => u64::try_from(revision).ok().map(CurrentRevision::Current),
    }
}

fn number_after(message: &str, marker: &str) -> Option<usize> {
    let (_, rest) = message.split_once(marker)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the store reports as the actual state in a wrong expected version.
///
/// KurrentDB keeps a soft-deleted stream's last revision and may report it, but in the model a
/// soft-deleted stream is absent: when a read finds the stream absent, that wins. Otherwise the
/// server's view (taken when it refused) wins over the later read.
pub(super) fn reported_actual(
    server: Option<CurrentRevision>,
    seen: &StreamView,
) -> CurrentRevision {
    match (seen, server) {
        (StreamView::Absent, _) => CurrentRevision::NoStream,
        (_, Some(server)) => server,
        (StreamView::Last(revision), None) => CurrentRevision::Current(*revision),
        (StreamView::Hidden, None) => CurrentRevision::NoStream,
    }
}

/// What a read of a stream's newest event found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StreamView {
    /// Never written, or soft-deleted and not written since.
    Absent,
    /// The newest visible event has this revision.
    Last(u64),
    /// The stream exists but its metadata (max age) hides every event.
    Hidden,
}

/// An event id found in a stream, where it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct StoredId {
    pub(super) id: EventId,
    pub(super) revision: u64,
    pub(super) position: Position,
}

/// What the ids of a batch say about an append (see [`crate::EventStore::append`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Retry {
    /// None of the ids is stored: a new append.
    New,
    /// Every id is stored, consecutively, in order, where the expectation puts it: a retry of an
    /// append that succeeded, and this was its result.
    Original(AppendResult),
    /// Some ids are stored, but not as this batch: this is the first of them, in batch order.
    Conflict(EventId),
}

/// Decides [`Retry`] from the batch's ids and the stream's stored ids (oldest first).
///
/// KurrentDB only recognises a retry at the expected revision, or from a cache with `Any`, and
/// writes a batch that reuses a stored id elsewhere; it reports other partial matches as a wrong
/// expected version. So the store decides itself, from the ids it reads back.
pub(super) fn recognise_retry(
    batch: &[EventId],
    expected: ExpectedRevision,
    stored: &[StoredId],
) -> Retry {
    let by_id: HashMap<EventId, &StoredId> = stored.iter().map(|s| (s.id, s)).collect();
    let found: Vec<Option<&&StoredId>> = batch.iter().map(|id| by_id.get(id)).collect();
    let Some(first_found) = batch
        .iter()
        .zip(&found)
        .find_map(|(id, stored)| stored.map(|_| *id))
    else {
        return Retry::New;
    };
    let in_place = found.iter().all(Option::is_some) && {
        let revisions: Vec<u64> = found.iter().flatten().map(|s| s.revision).collect();
        let consecutive = revisions
            .windows(2)
            .all(|pair| pair[0].checked_add(1) == Some(pair[1]));
        let where_expected = match (expected, revisions.first()) {
            (ExpectedRevision::Exact(revision), Some(&first)) => {
                revision.checked_add(1) == Some(first)
            }
            _ => true,
        };
        consecutive && where_expected
    };
    match found.last() {
        Some(Some(last)) if in_place => Retry::Original(AppendResult {
            next_expected_revision: last.revision,
            position: last.position,
        }),
        _ => Retry::Conflict(first_found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StreamName {
        StreamName::parse(s).expect("valid stream name")
    }

    fn raw<'a>(stream: &'a str, metadata: &'a HashMap<String, String>) -> RawEvent<'a> {
        RawEvent {
            stream,
            id: uuid::Uuid::now_v7(),
            revision: 4,
            position: kdb::Position {
                commit: 1200,
                prepare: 1100,
            },
            event_type: "repit.lesson.v1.LessonScheduled".to_owned(),
            is_json: false,
            data: Bytes::from_static(&[0, 159, 255]),
            custom_metadata: Bytes::from_static(&[1, 2]),
            system_metadata: metadata,
            created: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn expected_revisions_map_one_for_one_to_stream_states() {
        assert_eq!(stream_state(ExpectedRevision::Any), kdb::StreamState::Any);
        assert_eq!(
            stream_state(ExpectedRevision::NoStream),
            kdb::StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedRevision::StreamExists),
            kdb::StreamState::StreamExists
        );
        assert_eq!(
            stream_state(ExpectedRevision::Exact(7)),
            kdb::StreamState::StreamRevision(7)
        );
        assert_eq!(
            current_revision(kdb::CurrentRevision::Current(3)),
            CurrentRevision::Current(3)
        );
        assert_eq!(
            current_revision(kdb::CurrentRevision::NoStream),
            CurrentRevision::NoStream
        );
    }

    #[test]
    fn positions_are_commit_then_prepare_both_ways_and_keep_their_order() {
        let ours = Position::new(10, 7);
        let theirs = client_position(ours);
        assert_eq!((theirs.commit, theirs.prepare), (10, 7));
        assert_eq!(position(theirs), ours);
        let later = kdb::Position {
            commit: 11,
            prepare: 0,
        };
        assert_eq!(theirs.cmp(&later), ours.cmp(&position(later)));
        assert_eq!(theirs.to_string(), ours.to_string());
    }

    #[test]
    fn an_append_without_a_position_is_read_back() {
        let written = |commit, prepare| kdb::WriteResult {
            next_expected_version: 4,
            position: kdb::Position { commit, prepare },
        };
        assert_eq!(
            append_result(&written(900, 900)),
            Some(AppendResult {
                next_expected_revision: 4,
                position: Position::new(900, 900),
            })
        );
        assert_eq!(append_result(&written(0, 0)), None);
        assert_eq!(append_result(&written(u64::MAX, u64::MAX)), None);
    }

    #[test]
    fn verbatim_json_is_written_unchanged() {
        for text in [" {\"b\" : 1,\n \"a\":2.50} ", "[1e3]", "\"ünï\"", ""] {
            let written = serde_json::to_vec(&VerbatimJson(text)).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&written), text);
        }
    }

    #[test]
    fn content_types_map_to_the_clients_json_flag() {
        let json = NewEvent::json("t.Json", r#"{ "n": 1.50 }"#).with_metadata(&b"meta"[..]);
        let id = json.id;
        let data = format!("{:?}", event_data(0, json).expect("valid json"));
        assert!(data.contains("application/json"), "{data}");
        assert!(data.contains(r#"{ \"n\": 1.50 }"#), "{data}");
        assert!(data.contains(&id.to_string()), "{data}");
        assert!(data.contains("meta"), "{data}");
        let binary =
            event_data(0, NewEvent::protobuf("t.Proto", vec![0_u8, 255])).expect("binary data");
        let binary = format!("{binary:?}");
        assert!(binary.contains("application/octet-stream"), "{binary}");
        assert!(
            binary.contains("custom_metadata: None"),
            "no metadata: {binary}"
        );
        assert!(matches!(
            event_data(3, NewEvent::json("t", vec![0xff_u8])),
            Err(Error::InvalidEvent {
                index: 3,
                reason: InvalidEventReason::NotJson(_)
            })
        ));
    }

    #[test]
    fn recorded_events_come_back_with_the_models_content_type_and_microseconds() {
        // 2024-05-01T10:20:30.123456Z in ticks since the Unix epoch, with a sub-microsecond digit.
        let metadata: HashMap<String, String> =
            [("created".to_owned(), "17145588301234567".to_owned())]
                .into_iter()
                .collect();
        let Decoded::Event(event) = decode(raw("lesson-1", &metadata)) else {
            panic!("an application event decodes");
        };
        assert_eq!(event.stream, name("lesson-1"));
        assert_eq!(event.revision, 4);
        assert_eq!(event.position, Position::new(1200, 1100));
        assert_eq!(event.content_type, ContentType::Protobuf);
        assert_eq!(event.data, Bytes::from_static(&[0, 159, 255]));
        assert_eq!(event.metadata, Bytes::from_static(&[1, 2]));
        assert_eq!(
            event.created.to_rfc3339(),
            "2024-05-01T10:20:30.123456+00:00"
        );

        let json = RawEvent {
            is_json: true,
            ..raw("$$lesson-1", &metadata)
        };
        let Decoded::Event(json) = decode(json) else {
            panic!("a system stream's event decodes");
        };
        assert_eq!(json.content_type, ContentType::Json);
        assert!(json.stream.is_system());

        let empty = HashMap::new();
        let Decoded::Event(fallback) = decode(raw("lesson-1", &empty)) else {
            panic!("an event without ticks decodes");
        };
        assert_eq!(
            fallback.created,
            DateTime::<Utc>::UNIX_EPOCH,
            "the client's time"
        );
        assert_eq!(created_from_ticks("not a number"), None);
    }

    #[test]
    fn an_event_read_from_a_stream_of_an_older_server_gets_its_own_log_position() {
        let metadata = HashMap::new();
        let old = RawEvent {
            position: kdb::Position {
                commit: u64::MAX,
                prepare: 4096,
            },
            ..raw("lesson-1", &metadata)
        };
        assert_eq!(decode(old).position(), Position::new(4096, 4096));
    }

    #[test]
    fn tombstones_and_unrepresentable_streams_are_not_events() {
        let metadata = HashMap::new();
        let tombstone = RawEvent {
            event_type: TOMBSTONE_EVENT_TYPE.to_owned(),
            ..raw("lesson-1", &metadata)
        };
        assert_eq!(
            decode(tombstone),
            Decoded::Tombstone(Position::new(1200, 1100))
        );
        let long = format!("$${}", "x".repeat(254));
        assert_eq!(
            decode(raw(&long, &metadata)),
            Decoded::Unrepresentable(Position::new(1200, 1100))
        );
    }

    #[test]
    fn metadata_is_sent_in_eventstoredbs_json_with_max_age_in_seconds() {
        let metadata = StreamMetadata {
            max_age: Some(std::time::Duration::from_secs(90)),
            ..Default::default()
        };
        let event = format!("{:?}", metadata_event(&metadata).expect("encodes"));
        assert!(event.contains(r#"{\"$maxAge\":90}"#), "{event}");
        assert!(event.contains("$metadata"), "{event}");
        assert!(event.contains("application/json"), "{event}");
    }

    #[test]
    fn client_errors_are_translated() {
        let wev = failure(kdb::Error::WrongExpectedVersion {
            expected: kdb::StreamState::NoStream,
            current: kdb::CurrentRevision::Current(2),
        });
        assert!(matches!(
            wev,
            Failure::WrongExpectedVersion(Some(CurrentRevision::Current(2)))
        ));
        assert!(matches!(
            failure(kdb::Error::ResourceDeleted),
            Failure::Deleted
        ));
        assert!(matches!(
            failure(kdb::Error::ResourceNotFound),
            Failure::NotFound
        ));
        for unavailable in [
            kdb::Error::AccessDenied,
            kdb::Error::ServerError("server is too busy".to_owned()),
            kdb::Error::ConnectionClosed,
            kdb::Error::DeadlineExceeded,
            kdb::Error::NotLeaderException(kdb::Endpoint {
                host: "node-2".to_owned(),
                port: 2113,
            }),
        ] {
            assert!(
                matches!(failure(unavailable), Failure::Other(Error::Unavailable(_))),
                "unavailable"
            );
        }
        assert!(matches!(
            failure(kdb::Error::InternalParsingError("bad".to_owned())),
            Failure::Other(Error::Corrupt(_))
        ));
        let stream = name("lesson-1");
        assert!(matches!(
            failure(kdb::Error::ResourceDeleted).into_error(Some(&stream)),
            Error::StreamDeleted { stream: s } if s == stream
        ));
        assert!(matches!(
            Failure::NotFound.into_error(None),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn wrong_expected_versions_of_deletes_are_read_from_the_status_message() {
        let message = |actual: &str| {
            format!(
                "Delete failed due to WrongExpectedVersion. Stream: s-1, Expected version: 1, \
                 Actual version: {actual}"
            )
        };
        assert!(matches!(
            grpc_failure(GRPC_FAILED_PRECONDITION, &message("2")),
            Some(Failure::WrongExpectedVersion(Some(
                CurrentRevision::Current(2)
            )))
        ));
        assert!(matches!(
            grpc_failure(GRPC_FAILED_PRECONDITION, &message("-1")),
            Some(Failure::WrongExpectedVersion(Some(
                CurrentRevision::NoStream
            )))
        ));
        assert!(matches!(
            grpc_failure(GRPC_FAILED_PRECONDITION, &message("")),
            Some(Failure::WrongExpectedVersion(None))
        ));
        assert!(grpc_failure(GRPC_FAILED_PRECONDITION, "Failed to acquire lock").is_none());
        assert!(matches!(
            grpc_failure(
                GRPC_INVALID_ARGUMENT,
                "Maximum Append Size of 1048576 Exceeded."
            ),
            Some(Failure::TooLarge(Some(1_048_576)))
        ));
        assert!(grpc_failure(GRPC_INVALID_ARGUMENT, "'x' is not a valid y").is_none());
    }

    #[test]
    fn a_soft_deleted_stream_is_reported_as_absent() {
        let server = CurrentRevision::Current(2);
        assert_eq!(
            reported_actual(Some(server), &StreamView::Absent),
            CurrentRevision::NoStream
        );
        assert_eq!(
            reported_actual(Some(server), &StreamView::Last(5)),
            server,
            "the server's view, taken when it refused"
        );
        assert_eq!(
            reported_actual(None, &StreamView::Last(5)),
            CurrentRevision::Current(5)
        );
    }

    fn stored(ids: &[EventId], first_revision: u64) -> Vec<StoredId> {
        ids.iter()
            .zip(first_revision..)
            .map(|(&id, revision)| StoredId {
                id,
                revision,
                position: Position::new(100 + revision, 100 + revision),
            })
            .collect()
    }

    #[test]
    fn a_retry_is_recognised_only_where_the_batch_was_written() {
        let (a, b, c) = (EventId::new(), EventId::new(), EventId::new());
        let stream = stored(&[a, b, c], 0);
        let original = Retry::Original(AppendResult {
            next_expected_revision: 2,
            position: Position::new(102, 102),
        });
        assert_eq!(
            recognise_retry(&[EventId::new()], ExpectedRevision::Any, &stream),
            Retry::New
        );
        assert_eq!(
            recognise_retry(&[b, c], ExpectedRevision::Any, &stream),
            original
        );
        assert_eq!(
            recognise_retry(&[b, c], ExpectedRevision::Exact(0), &stream),
            original
        );
        assert_eq!(
            recognise_retry(&[b, c], ExpectedRevision::NoStream, &stream),
            original
        );
        assert_eq!(
            recognise_retry(&[b, c], ExpectedRevision::Exact(1), &stream),
            Retry::Conflict(b),
            "not right after the expected revision"
        );
    }

    #[test]
    fn a_partial_id_match_is_an_idempotency_conflict_naming_the_first_stored_id() {
        let (a, b) = (EventId::new(), EventId::new());
        let fresh = EventId::new();
        let stream = stored(&[a, b], 0);
        assert_eq!(
            recognise_retry(&[a, fresh], ExpectedRevision::Any, &stream),
            Retry::Conflict(a)
        );
        assert_eq!(
            recognise_retry(&[fresh, b], ExpectedRevision::Any, &stream),
            Retry::Conflict(b)
        );
        assert_eq!(
            recognise_retry(&[b, a], ExpectedRevision::Any, &stream),
            Retry::Conflict(b),
            "reordered"
        );
        assert_eq!(
            recognise_retry(
                &[fresh, EventId::new(), a],
                ExpectedRevision::Exact(1),
                &stream
            ),
            Retry::Conflict(a),
            "a stored id at the end of a new batch"
        );
    }
}
