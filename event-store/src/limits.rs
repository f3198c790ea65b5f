//! What one append may contain, and the batch check every backend runs before writing.

use std::collections::HashSet;

use crate::error::{Error, InvalidEventReason, Result};
use crate::model::{InvalidStreamName, NewEvent, StreamName};

/// EventStoreDB's default maximum append size: 1 MiB.
pub const DEFAULT_MAX_APPEND_SIZE: usize = 1024 * 1024;

/// The longest event type in bytes (the same bound as stream names).
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Above this much JSON, checking it would hold a runtime thread for more than about half a
/// millisecond, so [`check_append`] moves the work to the blocking pool.
const INLINE_JSON_CHECK_LIMIT: usize = 64 * 1024;

/// Per-store limits, fixed when the store is opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// The largest batch, in bytes as counted by [`NewEvent::size`].
    pub max_append_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_append_size: DEFAULT_MAX_APPEND_SIZE,
        }
    }
}

/// Checks a batch against every rule that does not need the stored state: the stream is not a
/// system stream, the batch is not empty or too large, and each event has a valid type, JSON data
/// where it claims JSON, and an id not repeated in the batch.
///
/// Backends call this (or [`check_append`]) before touching storage, so bad input gets the same
/// typed error everywhere and nothing is written.
pub fn validate_append(stream: &StreamName, events: &[NewEvent], limits: &Limits) -> Result<()> {
    validate_shape(stream, events, limits)?;
    validate_json(events)
}

/// [`validate_append`] without blocking the runtime: large JSON payloads are checked on the
/// blocking pool. Takes and returns the batch so it can cross to that pool without a copy.
pub async fn check_append(
    stream: &StreamName,
    events: Vec<NewEvent>,
    limits: &Limits,
) -> Result<Vec<NewEvent>> {
    validate_shape(stream, &events, limits)?;
    let json_bytes: usize = events
        .iter()
        .filter(|e| e.content_type.is_json())
        .map(|e| e.data.len())
        .sum();
    if json_bytes <= INLINE_JSON_CHECK_LIMIT {
        validate_json(&events)?;
        return Ok(events);
    }
    tokio::task::spawn_blocking(move || validate_json(&events).map(|()| events))
        .await
        .map_err(Error::unavailable)?
}

fn validate_shape(stream: &StreamName, events: &[NewEvent], limits: &Limits) -> Result<()> {
    if stream.is_system() {
        return Err(InvalidStreamName::Reserved.into());
    }
    if events.is_empty() {
        return Err(Error::EmptyAppend);
    }
    let size: usize = events.iter().map(NewEvent::size).sum();
    if size > limits.max_append_size {
        return Err(Error::AppendTooLarge {
            size,
            max: limits.max_append_size,
        });
    }
    let mut ids = HashSet::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let invalid = |reason| Error::InvalidEvent { index, reason };
        let event_type = event.event_type.as_str();
        if event_type.is_empty() {
            return Err(invalid(InvalidEventReason::EmptyType));
        }
        if event_type.len() > MAX_EVENT_TYPE_LEN {
            return Err(invalid(InvalidEventReason::TypeTooLong {
                len: event_type.len(),
            }));
        }
        if event_type.chars().any(char::is_control) {
            return Err(invalid(InvalidEventReason::ControlCharacterInType));
        }
        if event_type.starts_with('$') {
            return Err(invalid(InvalidEventReason::ReservedType));
        }
        if !ids.insert(event.id) {
            return Err(invalid(InvalidEventReason::DuplicateId(event.id)));
        }
    }
    Ok(())
}

fn validate_json(events: &[NewEvent]) -> Result<()> {
    for (index, event) in events.iter().enumerate() {
        // Empty data means "no payload", which EventStoreDB accepts for JSON events too.
        if event.content_type.is_json() && !event.data.is_empty() {
            serde_json::from_slice::<serde::de::IgnoredAny>(&event.data).map_err(|e| {
                Error::InvalidEvent {
                    index,
                    reason: InvalidEventReason::NotJson(e.to_string()),
                }
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamName {
        StreamName::parse("s-1").expect("valid name")
    }

    #[test]
    fn a_batch_at_the_limit_passes_and_one_byte_more_fails() {
        let limits = Limits {
            max_append_size: 10,
        };
        let event = NewEvent::protobuf("t", vec![0_u8; 9]);
        assert!(validate_append(&stream(), &[event], &limits).is_ok());
        let big = NewEvent::protobuf("t", vec![0_u8; 10]);
        assert!(matches!(
            validate_append(&stream(), &[big], &limits),
            Err(Error::AppendTooLarge { size: 11, max: 10 })
        ));
    }

    #[test]
    fn each_bad_event_is_reported_by_index() {
        let good = NewEvent::json("t", "{}");
        let cases = [
            (NewEvent::json("", "{}"), InvalidEventReason::EmptyType),
            (
                NewEvent::json("a\u{0}", "{}"),
                InvalidEventReason::ControlCharacterInType,
            ),
            (
                NewEvent::json("$metadata", "{}"),
                InvalidEventReason::ReservedType,
            ),
            (
                NewEvent::json("t", "x".repeat(300)).with_id(good.id),
                InvalidEventReason::DuplicateId(good.id),
            ),
        ];
        for (bad, reason) in cases {
            let result = validate_append(&stream(), &[good.clone(), bad], &Limits::default());
            match result {
                Err(Error::InvalidEvent {
                    index: 1,
                    reason: got,
                }) => assert_eq!(got, reason),
                other => panic!("expected invalid event 1 ({reason}), got {other:?}"),
            }
        }
        let not_json = NewEvent::json("t", vec![0xff_u8, 0xfe]);
        assert!(matches!(
            validate_append(&stream(), &[not_json], &Limits::default()),
            Err(Error::InvalidEvent {
                index: 0,
                reason: InvalidEventReason::NotJson(_)
            })
        ));
    }

    #[tokio::test]
    async fn large_json_is_checked_off_the_runtime_with_the_same_result() {
        let data = format!("[{}0]", "0,".repeat(100_000));
        let ok = check_append(
            &stream(),
            vec![NewEvent::json("t", data.clone())],
            &Limits::default(),
        )
        .await
        .expect("valid json");
        assert_eq!(ok.len(), 1);
        let bad = NewEvent::json("t", data + ",");
        assert!(matches!(
            check_append(&stream(), vec![bad], &Limits::default()).await,
            Err(Error::InvalidEvent {
                index: 0,
                reason: InvalidEventReason::NotJson(_)
            })
        ));
    }

    #[test]
    fn system_streams_and_empty_batches_are_refused() {
        let system = StreamName::system("$ce-x").expect("valid system name");
        assert!(matches!(
            validate_append(&system, &[NewEvent::json("t", "{}")], &Limits::default()),
            Err(Error::InvalidStreamName(InvalidStreamName::Reserved))
        ));
        assert!(matches!(
            validate_append(&stream(), &[], &Limits::default()),
            Err(Error::EmptyAppend)
        ));
    }
}
