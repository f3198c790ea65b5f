//! Every proto → domain conversion of the lesson service, parsed once at the edge.
//!
//! [`Fields`] collects every problem of a request, so one INVALID_ARGUMENT names all bad fields
//! (AIP-193 `BadRequest`), and hands out harmless defaults meanwhile so parsing can go on.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc, Weekday};
use chrono_tz::Tz;
use repit_proto::repit::common::v1::{self as common, Money};
use repit_proto::repit::lesson::v1 as pb;
use tonic_types::FieldViolation;
use uuid::Uuid;

use crate::domain::local_time::parse_zone;
use crate::domain::recurrence::{Recurrence, RecurrenceEnd, WeeklySlot};
use crate::error::AppError;

/// Shortest and longest lesson (the contract: whole minutes, 5 min..12 h).
pub const MIN_DURATION: TimeDelta = TimeDelta::minutes(5);
pub const MAX_DURATION: TimeDelta = TimeDelta::hours(12);

/// The problems found in one request.
#[derive(Debug, Default)]
pub struct Fields {
    violations: Vec<FieldViolation>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `field`.
    pub fn bad(&mut self, field: &str, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// INVALID_ARGUMENT naming every problem, or Ok.
    pub fn finish(self) -> Result<(), AppError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(AppError::Invalid(self.violations))
        }
    }

    /// Like [`Fields::uuid`], telling a malformed value apart from a well-formed one (the nil
    /// UUID is a well-formed id, so it cannot mean "malformed").
    pub fn checked_uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        let before = self.violations.len();
        let id = self.uuid(field, value);
        (self.violations.len() == before).then_some(id)
    }

    /// A required UUID.
    pub fn uuid(&mut self, field: &str, value: &str) -> Uuid {
        if value.is_empty() {
            self.bad(field, "required");
            return Uuid::nil();
        }
        match Uuid::parse_str(value) {
            Ok(id) if value == id.hyphenated().to_string() => id,
            _ => {
                self.bad(field, "must be a UUID in canonical lowercase form");
                Uuid::nil()
            }
        }
    }

    /// An optional UUID (empty is `None`).
    pub fn optional_uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        (!value.is_empty()).then(|| self.uuid(field, value))
    }

    /// A required instant.
    pub fn timestamp(
        &mut self,
        field: &str,
        value: Option<&prost_types::Timestamp>,
    ) -> DateTime<Utc> {
        match value {
            None => {
                self.bad(field, "required");
                DateTime::UNIX_EPOCH
            }
            Some(ts) => match u32::try_from(ts.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
            {
                Some(at) => at,
                None => {
                    self.bad(field, "is not a valid timestamp");
                    DateTime::UNIX_EPOCH
                }
            },
        }
    }

    /// A lesson duration: whole minutes, 5 min..12 h.
    pub fn duration(&mut self, field: &str, value: &prost_types::Duration) -> TimeDelta {
        let whole_minutes = value.nanos == 0 && value.seconds % 60 == 0;
        let duration = TimeDelta::seconds(value.seconds);
        if !whole_minutes || duration < MIN_DURATION || duration > MAX_DURATION {
            self.bad(
                field,
                "must be whole minutes between 5 minutes and 12 hours",
            );
            return MIN_DURATION;
        }
        duration
    }

    /// A required IANA zone.
    pub fn zone(&mut self, field: &str, value: &str) -> Tz {
        parse_zone(value).unwrap_or_else(|e| {
            self.bad(field, e.to_string());
            chrono_tz::UTC
        })
    }

    /// Text of `min..=max` characters.
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) -> String {
        let chars = value.chars().count();
        if chars < min || chars > max {
            if min > 0 && chars == 0 {
                self.bad(field, "required");
            } else {
                self.bad(field, format!("must be {min} to {max} characters"));
            }
        }
        value.to_owned()
    }

    /// An optional amount of money: a non-negative amount in an ISO 4217 code.
    pub fn money(&mut self, field: &str, value: Option<&Money>) -> Option<Money> {
        let money = value?;
        if money.minor_units < 0 {
            self.bad(&format!("{field}.minor_units"), "must not be negative");
        }
        if money.currency.len() != 3 || !money.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            self.bad(
                &format!("{field}.currency"),
                "must be an ISO 4217 code such as RUB",
            );
        }
        Some(money.clone())
    }

    /// A calendar date.
    pub fn date(&mut self, field: &str, value: Option<&common::Date>) -> Option<NaiveDate> {
        let date = value?;
        let parsed = u32::try_from(date.month)
            .ok()
            .zip(u32::try_from(date.day).ok())
            .and_then(|(m, d)| NaiveDate::from_ymd_opt(date.year, m, d));
        if parsed.is_none() {
            self.bad(field, "is not a valid date");
        }
        parsed
    }

    /// The paths of an update mask, each checked against `allowed`.
    pub fn mask(&mut self, mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Vec<String> {
        let paths = mask.map(|m| m.paths.clone()).unwrap_or_default();
        if paths.is_empty() {
            self.bad(
                "update_mask",
                format!("required; paths: {}", allowed.join(", ")),
            );
        }
        for path in &paths {
            if !allowed.contains(&path.as_str()) {
                self.bad(
                    "update_mask",
                    format!("unknown path {path:?}; paths: {}", allowed.join(", ")),
                );
            }
        }
        paths
    }

    /// A page size (0: default).
    pub fn page_size(page: Option<&common::PageRequest>) -> i64 {
        repit_platform::paging::page_size(page.map_or(0, |p| p.page_size))
    }

    /// A recurrence rule, parsed and checked; also returned normalised as stored in events.
    pub fn recurrence(
        &mut self,
        value: Option<&pb::Recurrence>,
    ) -> Option<(Recurrence, pb::Recurrence)> {
        let Some(rule) = value else {
            self.bad("recurrence", "required");
            return None;
        };
        let before = self.violations.len();
        let zone = self.zone("recurrence.time_zone", &rule.time_zone);
        let start_date = match self.date("recurrence.start_date", rule.start_date.as_ref()) {
            Some(date) => Some(date),
            None if rule.start_date.is_none() => {
                self.bad("recurrence.start_date", "required");
                None
            }
            None => None,
        };
        let mut slots = Vec::new();
        for (i, slot) in rule.slots.iter().enumerate() {
            let weekday = match slot.weekday() {
                common::Weekday::Monday => Some(Weekday::Mon),
                common::Weekday::Tuesday => Some(Weekday::Tue),
                common::Weekday::Wednesday => Some(Weekday::Wed),
                common::Weekday::Thursday => Some(Weekday::Thu),
                common::Weekday::Friday => Some(Weekday::Fri),
                common::Weekday::Saturday => Some(Weekday::Sat),
                common::Weekday::Sunday => Some(Weekday::Sun),
                common::Weekday::Unspecified => None,
            };
            let time = slot.start_time.as_ref().and_then(|t| {
                NaiveTime::from_hms_opt(
                    u32::try_from(t.hours).ok()?,
                    u32::try_from(t.minutes).ok()?,
                    0,
                )
            });
            match (weekday, time) {
                (Some(weekday), Some(start_time)) => slots.push(WeeklySlot {
                    weekday,
                    start_time,
                }),
                (None, _) => self.bad(&format!("recurrence.slots[{i}].weekday"), "required"),
                (_, None) => self.bad(
                    &format!("recurrence.slots[{i}].start_time"),
                    "must be a time of day 00:00..23:59",
                ),
            }
        }
        let interval = if rule.interval_weeks == 0 {
            1
        } else {
            rule.interval_weeks
        };
        let interval = u32::try_from(interval).unwrap_or(0);
        let end = match &rule.end {
            Some(pb::recurrence::End::UntilDate(date)) => self
                .date("recurrence.until_date", Some(date))
                .map(RecurrenceEnd::Until),
            Some(pb::recurrence::End::OccurrenceCount(count)) => {
                Some(RecurrenceEnd::Count(u32::try_from(*count).unwrap_or(0)))
            }
            None => {
                self.bad("recurrence.end", "required: until_date or occurrence_count");
                None
            }
        };
        if self.violations.len() > before {
            return None;
        }
        let (Some(start_date), Some(end)) = (start_date, end) else {
            return None;
        };
        match Recurrence::new(slots, interval, zone, start_date, end) {
            Ok(parsed) => {
                let mut normalised = rule.clone();
                normalised.interval_weeks = i32::try_from(interval).unwrap_or(1);
                Some((parsed, normalised))
            }
            Err(error) => {
                self.bad(error.field(), error.to_string());
                None
            }
        }
    }
}

/// The `state` column value of a lesson state filter.
pub fn state_filter(fields: &mut Fields, states: &[i32]) -> Vec<&'static str> {
    states
        .iter()
        .filter_map(|s| match pb::LessonState::try_from(*s) {
            Ok(pb::LessonState::Unspecified) | Err(_) => {
                fields.bad("states", format!("unknown lesson state {s}"));
                None
            }
            Ok(state) => Some(crate::projections::state_column(state)),
        })
        .collect()
}
