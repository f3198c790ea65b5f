//! Stream metadata: per-stream settings with their own expected revision.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// Settings attached to a stream, in EventStoreDB's model. The store applies the three limits to
/// stream reads and stream subscriptions (`$all` is not affected, as in EventStoreDB, so the relay
/// and projections still see every event); `custom` is kept for the application.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct StreamMetadata {
    /// Keep only the newest `max_count` events visible (at least 1).
    pub max_count: Option<u64>,
    /// Hide events older than this (whole seconds, at least one: EventStoreDB's unit).
    pub max_age: Option<Duration>,
    /// Hide events with a lower revision.
    pub truncate_before: Option<u64>,
    /// Application properties. Keys must not start with `$` (reserved for the store's own).
    pub custom: BTreeMap<String, Value>,
}

/// Metadata and the revision it was written at (0 for the first write).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VersionedMetadata {
    /// The metadata revision: expected revisions for
    /// [`crate::EventStore::set_stream_metadata`] refer to it, not to the stream's events.
    pub revision: u64,
    /// The metadata.
    pub metadata: StreamMetadata,
}

/// Why metadata was refused or could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMetadata {
    /// `max_count` is zero.
    #[error("max count must be at least 1")]
    ZeroMaxCount,
    /// `max_age` is zero or not whole seconds.
    #[error("max age must be a whole number of seconds, at least one")]
    MaxAgeNotWholeSeconds,
    /// A custom key starts with `$`.
    #[error("custom metadata key {0:?} starts with `$`, which is reserved")]
    ReservedKey(String),
    /// Stored metadata is not in the expected JSON shape.
    #[error("stored metadata is malformed: {0}")]
    Malformed(String),
}

const MAX_COUNT: &str = "$maxCount";
const MAX_AGE: &str = "$maxAge";
const TRUNCATE_BEFORE: &str = "$tb";

impl StreamMetadata {
    /// Checks the rules stated on each field.
    pub fn validate(&self) -> Result<(), InvalidMetadata> {
        if self.max_count == Some(0) {
            return Err(InvalidMetadata::ZeroMaxCount);
        }
        if let Some(age) = self.max_age
            && (age.subsec_nanos() != 0 || age.is_zero())
        {
            return Err(InvalidMetadata::MaxAgeNotWholeSeconds);
        }
        if let Some(key) = self.custom.keys().find(|k| k.starts_with('$')) {
            return Err(InvalidMetadata::ReservedKey(key.clone()));
        }
        Ok(())
    }

    /// EventStoreDB's JSON form (`{"$maxCount":…,"$maxAge":<seconds>,"$tb":…,<custom>…}`), which
    /// the SQL backends store and the KurrentDB backend sends as the `$$<stream>` event.
    pub fn to_json(&self) -> String {
        let mut object: Map<String, Value> = self
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(count) = self.max_count {
            object.insert(MAX_COUNT.to_owned(), count.into());
        }
        if let Some(age) = self.max_age {
            object.insert(MAX_AGE.to_owned(), age.as_secs().into());
        }
        if let Some(revision) = self.truncate_before {
            object.insert(TRUNCATE_BEFORE.to_owned(), revision.into());
        }
        Value::Object(object).to_string()
    }

    /// Parses [`StreamMetadata::to_json`]'s form. Unknown `$` keys (EventStoreDB's `$acl`,
    /// `$cacheControl`) are ignored rather than refused, so metadata written by other tools
    /// still loads.
    pub fn from_json(json: &[u8]) -> Result<Self, InvalidMetadata> {
        let malformed = |what: &str| InvalidMetadata::Malformed(what.to_owned());
        let value: Value =
            serde_json::from_slice(json).map_err(|e| InvalidMetadata::Malformed(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(malformed("not a json object"));
        };
        let mut metadata = Self::default();
        for (key, value) in object {
            match key.as_str() {
                MAX_COUNT => {
                    metadata.max_count = Some(value.as_u64().ok_or_else(|| malformed(MAX_COUNT))?);
                }
                MAX_AGE => {
                    let secs = value.as_u64().ok_or_else(|| malformed(MAX_AGE))?;
                    metadata.max_age = Some(Duration::from_secs(secs));
                }
                TRUNCATE_BEFORE => {
                    metadata.truncate_before =
                        Some(value.as_u64().ok_or_else(|| malformed(TRUNCATE_BEFORE))?);
                }
                system if system.starts_with('$') => {}
                _ => {
                    metadata.custom.insert(key, value);
                }
            }
        }
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_eventstoredb_json() {
        let metadata = StreamMetadata {
            max_count: Some(10),
            max_age: Some(Duration::from_secs(3600)),
            truncate_before: Some(4),
            custom: [("owner".to_owned(), Value::from("tutor-1"))]
                .into_iter()
                .collect(),
        };
        let json = metadata.to_json();
        assert!(json.contains(r#""$maxAge":3600"#), "{json}");
        assert_eq!(StreamMetadata::from_json(json.as_bytes()), Ok(metadata));
    }

    #[test]
    fn invalid_metadata_is_refused() {
        let zero = StreamMetadata {
            max_count: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.validate(), Err(InvalidMetadata::ZeroMaxCount));
        let millis = StreamMetadata {
            max_age: Some(Duration::from_millis(1500)),
            ..Default::default()
        };
        assert_eq!(
            millis.validate(),
            Err(InvalidMetadata::MaxAgeNotWholeSeconds)
        );
        let reserved = StreamMetadata {
            custom: [("$acl".to_owned(), Value::Null)].into_iter().collect(),
            ..Default::default()
        };
        assert!(matches!(
            reserved.validate(),
            Err(InvalidMetadata::ReservedKey(_))
        ));
        assert!(StreamMetadata::from_json(b"[1]").is_err());
    }
}
