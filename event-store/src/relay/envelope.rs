//! The wire format of a relayed event: one NATS message per [`RecordedEvent`].
//!
//! The relay writes it ([`encode`]) and the JetStream feed of the projection runtime reads it
//! ([`decode`]), so this module is the whole contract between the two:
//!
//! - subject: `<prefix>.<service>.<Name>` for RepitBot's `repit.<service>.v1.<Name>` events, so a
//!   consumer can filter by service on the server ([`subject`], [`subject_filter`]); anything
//!   else goes to `<prefix>.other.<type with unsafe characters replaced by '_'>`;
//! - payload: the event's `data`, byte for byte;
//! - headers: [`NATS_MSG_ID`] (the event id, so JetStream drops a republished event),
//!   [`STREAM`], [`REVISION`], [`POSITION`], [`EVENT_TYPE`], [`CONTENT_TYPE`], [`CREATED`],
//!   [`METADATA`] (omitted when empty) and, when the metadata carries one, the W3C
//!   [`TRACEPARENT`] so tracing tools that know NATS follow the event without decoding it.
//!
//! The stream name and event type are written as text, except that `%`, control characters and
//! whitespace at either end are percent-encoded: NATS trims header values and ends them at a line
//! break, and the names must come back exactly as they were stored.

use std::fmt;

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::model::{ContentType, EventId, Position, RecordedEvent, StreamName};

/// The event id; JetStream drops a message whose id it saw within the stream's duplicate window.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The event's stream name.
pub const STREAM: &str = "Repit-Stream";
/// The event's revision in its stream.
pub const REVISION: &str = "Repit-Revision";
/// The event's position in `$all`, as `C:<commit>/P:<prepare>`; the relay resumes after the
/// position on the last message of the JetStream stream.
pub const POSITION: &str = "Repit-Position";
/// The event type (`repit.lesson.v1.LessonScheduled`).
pub const EVENT_TYPE: &str = "Repit-Event-Type";
/// `json` or `protobuf`.
pub const CONTENT_TYPE: &str = "Repit-Content-Type";
/// When the store wrote the event, RFC 3339 in UTC with microseconds.
pub const CREATED: &str = "Repit-Created";
/// The event's metadata, base64 (standard alphabet, padded); absent when the metadata is empty.
pub const METADATA: &str = "Repit-Metadata";
/// The W3C trace context from the event's metadata, when it has one.
pub const TRACEPARENT: &str = "traceparent";

/// The subject prefix the relay and the feeds use unless configured otherwise.
pub const DEFAULT_SUBJECT_PREFIX: &str = "repit.events";

/// Why a NATS message could not be read back as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A header every relayed event carries is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but its value does not parse.
    #[error("invalid header {header}: {reason}")]
    InvalidHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// The subject an event of type `event_type` is published on.
///
/// `repit.<service>.v1.<Name>` maps to `<prefix>.<service>.<Name>`; everything after `v1.` is one
/// token, with unsafe characters replaced, so that every type starting with `repit.<service>.v1.`
/// lands under `<prefix>.<service>.` and [`subject_filter`] can never miss one. Any other type
/// maps to `<prefix>.other.<type with every character outside [A-Za-z0-9_-] replaced by '_'>`.
pub fn subject(prefix: &str, event_type: &str) -> String {
    match split_repit_type(event_type) {
        Some((service, name)) => format!("{prefix}.{service}.{}", token(name)),
        None => format!("{prefix}.other.{}", token(event_type)),
    }
}

/// A subject filter that passes every event whose type starts with `event_type_prefix`.
///
/// `repit.<service>.v1.` (optionally followed by the start of a name) maps to
/// `<prefix>.<service>.>`; a prefix that could match types of several services or versions, or
/// types outside the `repit.<service>.v1.` scheme, maps to `<prefix>.>`. The filter may pass
/// more than the prefix does, never less: consumers check the type again.
pub fn subject_filter(prefix: &str, event_type_prefix: &str) -> String {
    match split_repit_type(event_type_prefix) {
        Some((service, _)) => format!("{prefix}.{service}.>"),
        None => format!("{prefix}.>"),
    }
}

/// Splits `repit.<service>.v1.<rest>` into the service (a valid subject token) and the rest.
fn split_repit_type(event_type: &str) -> Option<(&str, &str)> {
    let rest = event_type.strip_prefix("repit.")?;
    let (service, rest) = rest.split_once('.')?;
    let name = rest.strip_prefix("v1.")?;
    let valid_token = !service.is_empty() && service.chars().all(is_token_char);
    valid_token.then_some((service, name))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// One subject token: unsafe characters (`.`, wildcards, whitespace, non-ASCII) become `_`.
fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    text.chars()
        .map(|c| if is_token_char(c) { c } else { '_' })
        .collect()
}

/// The subject, headers and payload of the NATS message that carries `event`.
pub fn encode(prefix: &str, event: &RecordedEvent) -> (String, HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, event.id.to_string().as_str());
    headers.insert(STREAM, escape(event.stream.as_str()));
    headers.insert(REVISION, event.revision.to_string().as_str());
    headers.insert(POSITION, event.position.to_string().as_str());
    headers.insert(EVENT_TYPE, escape(&event.event_type));
    headers.insert(CONTENT_TYPE, content_type_name(event.content_type));
    headers.insert(
        CREATED,
        event
            .created
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .as_str(),
    );
    if !event.metadata.is_empty() {
        headers.insert(METADATA, BASE64.encode(&event.metadata).as_str());
    }
    if let Some(traceparent) = traceparent(&event.metadata) {
        headers.insert(TRACEPARENT, traceparent);
    }
    (
        subject(prefix, &event.event_type),
        headers,
        event.data.clone(),
    )
}

/// Reads back an event written by [`encode`].
pub fn decode(headers: &HeaderMap, payload: Bytes) -> Result<RecordedEvent, EnvelopeError> {
    let stream = unescape(STREAM, required(headers, STREAM)?)?;
    let stream = StreamName::parse(stream).map_err(|error| invalid(STREAM, error))?;
    let event_type = unescape(EVENT_TYPE, required(headers, EVENT_TYPE)?)?;
    let content_type = match required(headers, CONTENT_TYPE)? {
        "json" => ContentType::Json,
        "protobuf" => ContentType::Protobuf,
        other => {
            return Err(invalid(
                CONTENT_TYPE,
                format!("unknown content type {other:?}"),
            ));
        }
    };
    let metadata = match headers.get(METADATA) {
        Some(value) => BASE64
            .decode(value.as_str())
            .map(Bytes::from)
            .map_err(|error| invalid(METADATA, error))?,
        None => Bytes::new(),
    };
    let created = DateTime::parse_from_rfc3339(required(headers, CREATED)?)
        .map_err(|error| invalid(CREATED, error))?
        .with_timezone(&Utc);
    Ok(RecordedEvent {
        stream,
        revision: parse(headers, REVISION)?,
        position: position(headers)?,
        id: parse::<EventId>(headers, NATS_MSG_ID)?,
        event_type,
        content_type,
        data: payload,
        metadata,
        created,
    })
}

/// The `$all` position on a relayed message, the only header the relay needs to resume.
pub fn position(headers: &HeaderMap) -> Result<Position, EnvelopeError> {
    parse(headers, POSITION)
}

fn content_type_name(content_type: ContentType) -> &'static str {
    match content_type {
        ContentType::Json => "json",
        ContentType::Protobuf => "protobuf",
    }
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, EnvelopeError> {
    headers
        .get(name)
        .map(HeaderValue::as_str)
        .ok_or(EnvelopeError::MissingHeader(name))
}

fn parse<T>(headers: &HeaderMap, name: &'static str) -> Result<T, EnvelopeError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    required(headers, name)?
        .parse()
        .map_err(|error| invalid(name, error))
}

fn invalid(header: &'static str, reason: impl fmt::Display) -> EnvelopeError {
    EnvelopeError::InvalidHeader {
        header,
        reason: reason.to_string(),
    }
}

/// Percent-encodes what NATS would not carry unchanged in a header value: `%` itself, control
/// characters (a line break ends the value), and whitespace at either end (values are trimmed).
fn escape(text: &str) -> HeaderValue {
    let kept_start = text.len() - text.trim_start().len();
    let kept_end = text.trim_end().len().max(kept_start);
    let mut escaped = String::with_capacity(text.len());
    for (index, c) in text.char_indices() {
        let at_edge = index < kept_start || index >= kept_end;
        if c == '%' || c.is_control() || (at_edge && c.is_whitespace()) {
            let mut buffer = [0; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                escaped.push_str(&format!("%{byte:02X}"));
            }
        } else {
            escaped.push(c);
        }
    }
    // Cannot panic: every character the header format refuses was escaped above.
    HeaderValue::from(escaped)
}

/// The inverse of [`escape`].
fn unescape(header: &'static str, text: &str) -> Result<String, EnvelopeError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail
                .get(..2)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| invalid(header, "truncated or invalid percent escape"))?;
            bytes.push(hex);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|error| invalid(header, error))
}

/// The `traceparent` (field 4) of metadata that is a protobuf `repit.common.v1.EventMetadata`.
///
/// Decoded by hand, because the event store must not depend on the generated protobuf crate: the
/// wire format is walked field by field, skipping everything but field 4. Anything that is not
/// well-formed protobuf (JSON metadata, garbage) yields `None`, and so does a value that is not
/// printable ASCII, which a W3C traceparent always is and a NATS header value must be.
pub fn traceparent(metadata: &[u8]) -> Option<&str> {
    const TRACEPARENT_FIELD: u64 = 4;
    const MAX_LEN: usize = 512;
    let mut rest = metadata;
    let mut found = None;
    while !rest.is_empty() {
        let key = read_varint(&mut rest)?;
        let (field, wire_type) = (key >> 3, key & 0b111);
        match wire_type {
            0 => {
                read_varint(&mut rest)?;
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                let value = rest.get(..len)?;
                rest = &rest[len..];
                if field == TRACEPARENT_FIELD {
                    // The last occurrence of a singular field wins (protobuf merge semantics).
                    found = Some(value);
                }
            }
            5 => rest = rest.get(4..)?,
            // Groups (3, 4) are not used by proto3 messages; other values are invalid.
            _ => return None,
        }
    }
    let value = std::str::from_utf8(found?).ok()?;
    let printable = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    (!value.is_empty() && value.len() <= MAX_LEN && printable).then_some(value)
}

/// Reads a base-128 varint, advancing `input`; `None` when truncated or longer than ten bytes.
fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event(content_type: ContentType, data: &'static [u8], metadata: Bytes) -> RecordedEvent {
        RecordedEvent {
            stream: StreamName::parse("lesson-42").expect("valid stream name"),
            revision: 7,
            position: Position::new(120, 118),
            id: EventId::new(),
            event_type: "repit.lesson.v1.LessonScheduled".to_owned(),
            content_type,
            data: Bytes::from_static(data),
            metadata,
            created: DateTime::parse_from_rfc3339("2025-03-01T10:20:30.123456Z")
                .expect("valid time")
                .with_timezone(&Utc),
        }
    }

    /// A string field in protobuf wire format.
    fn string_field(field: u8, value: &str) -> Vec<u8> {
        let mut bytes = vec![field << 3 | 2, u8::try_from(value.len()).expect("short")];
        bytes.extend_from_slice(value.as_bytes());
        bytes
    }

    /// `EventMetadata { correlation_id, causation_id, actor_user_id, traceparent }`.
    fn metadata(traceparent: &str) -> Bytes {
        let mut bytes = string_field(1, "corr-1");
        bytes.extend(string_field(2, "cause-1"));
        bytes.extend(string_field(3, "user-1"));
        if !traceparent.is_empty() {
            bytes.extend(string_field(4, traceparent));
        }
        Bytes::from(bytes)
    }

    #[test]
    fn repit_types_map_to_service_subjects() {
        let prefix = DEFAULT_SUBJECT_PREFIX;
        assert_eq!(
            subject(prefix, "repit.lesson.v1.LessonScheduled"),
            "repit.events.lesson.LessonScheduled"
        );
        assert_eq!(
            subject(prefix, "repit.lesson.v1.Outer.Inner"),
            "repit.events.lesson.Outer_Inner"
        );
        assert_eq!(subject("p", "repit.lesson.v1."), "p.lesson._");
        assert_eq!(
            subject(prefix, "repit.lesson.v2.LessonScheduled"),
            "repit.events.other.repit_lesson_v2_LessonScheduled"
        );
        assert_eq!(subject("p", "Order Placed*>"), "p.other.Order_Placed__");
        assert_eq!(
            subject("p", "repit.le sson.v1.X"),
            "p.other.repit_le_sson_v1_X"
        );
        assert_eq!(subject("p", "café"), "p.other.caf_");
    }

    #[test]
    fn filters_are_never_narrower_than_the_prefix() {
        assert_eq!(subject_filter("p", "repit.lesson.v1."), "p.lesson.>");
        assert_eq!(subject_filter("p", "repit.lesson.v1.Lesson"), "p.lesson.>");
        // Could match v10 or v2: only the whole prefix is safe.
        assert_eq!(subject_filter("p", "repit.lesson.v1"), "p.>");
        assert_eq!(subject_filter("p", "repit.lesson."), "p.>");
        assert_eq!(subject_filter("p", "repit."), "p.>");
        assert_eq!(subject_filter("p", ""), "p.>");
        assert_eq!(subject_filter("p", "Order"), "p.>");
    }

    #[test]
    fn protobuf_events_round_trip_with_metadata_and_traceparent() {
        let original = event(ContentType::Protobuf, b"\x08\x96\x01\xff", metadata(TRACE));
        let (subject, headers, payload) = encode("p", &original);
        assert_eq!(subject, "p.lesson.LessonScheduled");
        assert_eq!(payload, original.data);
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(NATS_MSG_ID), Some(original.id.to_string()));
        assert_eq!(header(STREAM).as_deref(), Some("lesson-42"));
        assert_eq!(header(REVISION).as_deref(), Some("7"));
        assert_eq!(header(POSITION).as_deref(), Some("C:120/P:118"));
        assert_eq!(header(CONTENT_TYPE).as_deref(), Some("protobuf"));
        assert_eq!(
            header(CREATED).as_deref(),
            Some("2025-03-01T10:20:30.123456Z")
        );
        assert_eq!(header(TRACEPARENT).as_deref(), Some(TRACE));
        assert_eq!(decode(&headers, payload), Ok(original));
    }

    #[test]
    fn json_events_without_metadata_round_trip() {
        let original = event(ContentType::Json, br#"{"a":1}"#, Bytes::new());
        let (_, headers, payload) = encode(DEFAULT_SUBJECT_PREFIX, &original);
        assert!(headers.get(METADATA).is_none());
        assert!(headers.get(TRACEPARENT).is_none());
        assert_eq!(
            headers.get(CONTENT_TYPE).map(HeaderValue::as_str),
            Some("json")
        );
        assert_eq!(decode(&headers, payload), Ok(original));
    }

    #[test]
    fn names_that_nats_would_alter_round_trip() {
        let mut original = event(ContentType::Json, b"{}", Bytes::from_static(b"{\"k\":1}"));
        original.stream = StreamName::parse("  odd 100% name\u{a0}").expect("valid stream name");
        original.event_type = "\tType With Spaces ".to_owned();
        let (_, headers, payload) = encode("p", &original);
        assert_eq!(
            headers.get(STREAM).map(HeaderValue::as_str),
            Some("%20%20odd 100%25 name%C2%A0")
        );
        assert_eq!(decode(&headers, payload), Ok(original));
    }

    #[test]
    fn missing_and_malformed_headers_are_reported() {
        let original = event(ContentType::Json, b"{}", Bytes::new());
        let (_, headers, payload) = encode("p", &original);
        let mut without_position = HeaderMap::new();
        for (name, values) in headers.iter() {
            if name.to_string() != POSITION {
                for value in values {
                    without_position.append(name.clone(), value.clone());
                }
            }
        }
        assert_eq!(
            decode(&without_position, payload.clone()),
            Err(EnvelopeError::MissingHeader(POSITION))
        );
        let mut bad = headers.clone();
        bad.insert(CONTENT_TYPE, "xml");
        assert!(matches!(
            decode(&bad, payload.clone()),
            Err(EnvelopeError::InvalidHeader {
                header: CONTENT_TYPE,
                ..
            })
        ));
        let mut bad = headers;
        bad.insert(STREAM, "%4");
        assert!(matches!(
            decode(&bad, payload),
            Err(EnvelopeError::InvalidHeader { header: STREAM, .. })
        ));
    }

    #[test]
    fn traceparent_is_found_among_other_fields() {
        assert_eq!(traceparent(&metadata(TRACE)), Some(TRACE));
        assert_eq!(traceparent(&metadata("")), None);
        assert_eq!(traceparent(b""), None);
        // Varint, fixed64 and fixed32 fields before it are skipped.
        let mut bytes = vec![
            0x08, 0x96, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1d, 1, 2, 3, 4,
        ];
        bytes.extend(string_field(4, TRACE));
        bytes.extend(string_field(9, "after"));
        assert_eq!(traceparent(&bytes), Some(TRACE));
        // The last occurrence wins.
        let mut twice = string_field(4, "first");
        twice.extend(string_field(4, TRACE));
        assert_eq!(traceparent(&twice), Some(TRACE));
    }

    #[test]
    fn malformed_or_unsafe_metadata_has_no_traceparent() {
        assert_eq!(traceparent(br#"{"traceparent":"00-ab"}"#), None);
        let mut truncated = string_field(4, TRACE);
        truncated.pop();
        assert_eq!(traceparent(&truncated), None);
        assert_eq!(traceparent(&[0x22, 0x80]), None);
        assert_eq!(traceparent(&string_field(4, "a\r\nb")), None);
        assert_eq!(traceparent(&[0xff; 11]), None);
    }

    proptest! {
        #[test]
        fn any_event_round_trips(
            stream in "[^\\p{Cc}$][^\\p{Cc}]{0,40}",
            event_type in "\\PC{1,60}",
            revision: u64,
            position: (u64, u64),
            data: Vec<u8>,
            metadata: Vec<u8>,
            json: bool,
            micros in 0i64..4_102_444_800_000_000,
        ) {
            let original = RecordedEvent {
                stream: StreamName::parse(&stream).expect("generated names are valid"),
                revision,
                position: Position::new(position.0, position.1),
                id: EventId::new(),
                event_type,
                content_type: if json { ContentType::Json } else { ContentType::Protobuf },
                data: Bytes::from(data),
                metadata: Bytes::from(metadata),
                created: DateTime::from_timestamp_micros(micros).expect("in range"),
            };
            let (subject, headers, payload) = encode(DEFAULT_SUBJECT_PREFIX, &original);
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && !t.contains(' ')));
            prop_assert_eq!(decode(&headers, payload), Ok(original));
        }

        #[test]
        fn traceparent_never_panics(bytes: Vec<u8>) {
            let _ = traceparent(&bytes);
        }
    }
}
