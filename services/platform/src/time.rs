//! Conversions between protobuf time types and chrono, used by `evolve` (which cannot fail, so
//! out-of-range values saturate instead of erroring) and by the adapters.

use chrono::{DateTime, TimeDelta, Utc};
use prost_types::{Duration as PbDuration, Timestamp};

/// A protobuf timestamp as a UTC instant; an out-of-range one becomes the Unix epoch.
pub fn from_timestamp(ts: Option<&Timestamp>) -> DateTime<Utc> {
    ts.and_then(|ts| DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0)))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// A UTC instant as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration as chrono's; negative or absent is zero.
pub fn from_duration(d: Option<&PbDuration>) -> TimeDelta {
    d.map_or(TimeDelta::zero(), |d| {
        TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(0)).unwrap_or(TimeDelta::zero())
    })
    .max(TimeDelta::zero())
}

/// Chrono's duration as protobuf's.
pub fn duration(d: TimeDelta) -> PbDuration {
    PbDuration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}
