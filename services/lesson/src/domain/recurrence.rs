//! Recurring series: the rule that says on which dates and at which wall times a series' lessons
//! fall (`Recurrence` in `lesson.proto`), its validation, and the occurrences it yields.
//!
//! A rule is weekly slots (weekday + local start time) repeated every N ISO weeks, counted from the
//! week of the start date, until a date or for a number of occurrences. Starts are wall times in the
//! series' zone, so a lesson at 18:00 stays at 18:00 across DST changes; the UTC instant moves
//! instead. A series never has more than [`MAX_OCCURRENCES`] occurrences, so that creating one
//! writes a bounded number of lessons.

use std::collections::HashSet;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;

use super::local_time::{local_to_utc, to_local, week_start};

/// Most occurrences a series may have (about a year of daily lessons).
pub const MAX_OCCURRENCES: usize = 366;

/// Largest `interval_weeks` a rule may have (once a year).
pub const MAX_INTERVAL_WEEKS: u32 = 52;

/// One weekly time slot: a weekday and a local start time in the series' zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeeklySlot {
    /// Day of the week the occurrence falls on.
    pub weekday: Weekday,
    /// Local wall-clock start time in the series' zone.
    pub start_time: NaiveTime,
}

/// How a series ends; a series never runs forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecurrenceEnd {
    /// Last local date on which an occurrence may fall (inclusive).
    Until(NaiveDate),
    /// Number of occurrences, 1..=366.
    Count(u32),
}

/// When the occurrences of a series fall.
///
/// Build it with [`Recurrence::new`], which validates it. The fields are public for reading and
/// for rebuilding already validated rules (from events); [`Recurrence::occurrences`] stays total
/// and bounded on any value, valid or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    /// At least one; each weekday and time at most once.
    pub slots: Vec<WeeklySlot>,
    /// Every N weeks, 1..=52.
    pub interval_weeks: u32,
    /// Zone the slots' wall times are in.
    pub zone: Tz,
    /// First date on which an occurrence may fall; its ISO week is week 0 of the interval.
    pub start_date: NaiveDate,
    /// When the series stops.
    pub end: RecurrenceEnd,
}

/// One occurrence of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// Local date on which the occurrence starts, in the series' zone.
    pub local_date: NaiveDate,
    /// Local wall time at which it starts. It is the slot's time except on a day a DST gap skips
    /// that time, where it is moved forward by the gap (02:30 becomes 03:30).
    pub local_time: NaiveTime,
    /// The instant it starts.
    pub start: DateTime<Utc>,
}

/// Why a recurrence rule is refused. Each variant maps to one request field ([`Self::field`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecurrenceError {
    /// The rule has no weekly slot.
    #[error("a series needs at least one weekly slot")]
    NoSlots,
    /// The same weekday and time appear twice.
    #[error("weekly slot {weekday} {start_time} is listed more than once")]
    DuplicateSlot {
        /// The repeated slot's weekday.
        weekday: Weekday,
        /// The repeated slot's time.
        start_time: NaiveTime,
    },
    /// `interval_weeks` is outside 1..=52.
    #[error("interval_weeks must be between 1 and 52, got {0}")]
    IntervalOutOfRange(u32),
    /// The end date comes before the start date.
    #[error("until_date {until_date} is before start_date {start_date}")]
    UntilBeforeStart {
        /// The rule's first date.
        start_date: NaiveDate,
        /// The rule's last date.
        until_date: NaiveDate,
    },
    /// `occurrence_count` is outside 1..=366.
    #[error("occurrence_count must be between 1 and 366, got {0}")]
    CountOutOfRange(u32),
    /// The rule runs past 366 occurrences before its end date.
    #[error("the series would have more than 366 occurrences by until_date {until_date}")]
    TooManyOccurrences {
        /// The rule's last date.
        until_date: NaiveDate,
    },
    /// No slot falls between the start and the end.
    #[error("the series would have no occurrence{}", no_occurrence_range(.start_date, .until_date))]
    NoOccurrences {
        /// The rule's first date.
        start_date: NaiveDate,
        /// The rule's last date; `None` for a count-bounded rule (which only runs out of dates at
        /// the end of the calendar).
        until_date: Option<NaiveDate>,
    },
}

/// The date range named in [`RecurrenceError::NoOccurrences`].
fn no_occurrence_range(start_date: &NaiveDate, until_date: &Option<NaiveDate>) -> String {
    match until_date {
        Some(until_date) => format!(" between start_date {start_date} and until_date {until_date}"),
        None => format!(" from start_date {start_date}"),
    }
}

impl RecurrenceError {
    /// The request field the problem is about, as a path in `Recurrence` (for field violations).
    pub fn field(&self) -> &'static str {
        match self {
            Self::NoSlots | Self::DuplicateSlot { .. } => "recurrence.slots",
            Self::IntervalOutOfRange(_) => "recurrence.interval_weeks",
            Self::UntilBeforeStart { .. } | Self::TooManyOccurrences { .. } => {
                "recurrence.until_date"
            }
            Self::CountOutOfRange(_) => "recurrence.occurrence_count",
            Self::NoOccurrences {
                until_date: Some(_),
                ..
            } => "recurrence.until_date",
            Self::NoOccurrences {
                until_date: None, ..
            } => "recurrence.start_date",
        }
    }
}

impl Recurrence {
    /// Builds a rule, refusing one the contract does not allow (see [`RecurrenceError`]).
    ///
    /// `interval_weeks` must already be 1..=52: the proto's "0 means 1" is the caller's mapping.
    pub fn new(
        slots: Vec<WeeklySlot>,
        interval_weeks: u32,
        zone: Tz,
        start_date: NaiveDate,
        end: RecurrenceEnd,
    ) -> Result<Self, RecurrenceError> {
        let rule = Self {
            slots,
            interval_weeks,
            zone,
            start_date,
            end,
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks the rule; problems are reported in the order of the proto's fields.
    pub fn validate(&self) -> Result<(), RecurrenceError> {
        if self.slots.is_empty() {
            return Err(RecurrenceError::NoSlots);
        }
        let mut seen = HashSet::with_capacity(self.slots.len());
        for slot in &self.slots {
            if !seen.insert(*slot) {
                return Err(RecurrenceError::DuplicateSlot {
                    weekday: slot.weekday,
                    start_time: slot.start_time,
                });
            }
        }
        if !(1..=MAX_INTERVAL_WEEKS).contains(&self.interval_weeks) {
            return Err(RecurrenceError::IntervalOutOfRange(self.interval_weeks));
        }
        match self.end {
            RecurrenceEnd::Until(until_date) if until_date < self.start_date => {
                return Err(RecurrenceError::UntilBeforeStart {
                    start_date: self.start_date,
                    until_date,
                });
            }
            RecurrenceEnd::Count(count) if !(1..=MAX_OCCURRENCES).contains(&(count as usize)) => {
                return Err(RecurrenceError::CountOutOfRange(count));
            }
            _ => {}
        }
        // One past the limit is enough to tell "too many" without walking a far-off until date.
        let produced = self.wall_times(self.start_date, MAX_OCCURRENCES + 1).len();
        match self.end {
            RecurrenceEnd::Until(until_date) if produced > MAX_OCCURRENCES => {
                Err(RecurrenceError::TooManyOccurrences { until_date })
            }
            RecurrenceEnd::Until(until_date) if produced == 0 => {
                Err(RecurrenceError::NoOccurrences {
                    start_date: self.start_date,
                    until_date: Some(until_date),
                })
            }
            RecurrenceEnd::Count(_) if produced == 0 => Err(RecurrenceError::NoOccurrences {
                start_date: self.start_date,
                until_date: None,
            }),
            _ => Ok(()),
        }
    }

    /// The same rule restarted at `from` ("this and following"): `from` becomes the start date,
    /// so its week becomes week 0 of the interval and a count counts from it. Validated, since the
    /// restarted rule can yield nothing (`from` after the end) or, from an earlier date, too much.
    pub fn starting_from(&self, from: NaiveDate) -> Result<Self, RecurrenceError> {
        Self::new(
            self.slots.clone(),
            self.interval_weeks,
            self.zone,
            from,
            self.end,
        )
    }

    /// Every occurrence of the rule, in time order, at most [`MAX_OCCURRENCES`].
    pub fn occurrences(&self) -> Vec<Occurrence> {
        self.occurrences_from(self.start_date)
    }

    /// The occurrences of the same rule restarted at `from` (see [`Self::starting_from`]), in time
    /// order, at most [`MAX_OCCURRENCES`]. Used for "this and following" edits.
    pub fn occurrences_from(&self, from: NaiveDate) -> Vec<Occurrence> {
        let mut occurrences: Vec<Occurrence> = self
            .wall_times(from, MAX_OCCURRENCES)
            .into_iter()
            .map(|(date, time)| {
                let start = local_to_utc(self.zone, date, time);
                let local = to_local(self.zone, start);
                Occurrence {
                    local_date: local.date(),
                    local_time: local.time(),
                    start,
                }
            })
            .collect();
        // Wall-time order is time order except around a DST gap, where a skipped slot moves past
        // a later one on the same day (02:30 → 03:30 passes 03:00). The sort is stable, so slots
        // that land on the same instant keep their wall-time order.
        occurrences.sort_by_key(|occurrence| occurrence.start);
        occurrences
    }

    /// The slots' wall dates and times from `start_date` on, in wall-time order, at most `limit`.
    ///
    /// Total on any field values: no slots yields nothing, interval 0 is read as 1, and the walk
    /// stops at the end of the calendar, so neither a bad value nor a far date loops or panics.
    fn wall_times(&self, start_date: NaiveDate, limit: usize) -> Vec<(NaiveDate, NaiveTime)> {
        let mut slots = self.slots.clone();
        slots.sort_by_key(|slot| (slot.weekday.num_days_from_monday(), slot.start_time));
        slots.dedup();
        let limit = match self.end {
            RecurrenceEnd::Count(count) => limit.min(count as usize),
            RecurrenceEnd::Until(_) => limit,
        };
        let mut wall_times = Vec::new();
        if slots.is_empty() || limit == 0 {
            return wall_times;
        }
        let step = Days::new(7 * u64::from(self.interval_weeks.max(1)));
        let mut week = Some(week_start(start_date, Weekday::Mon));
        while let Some(monday) = week {
            for slot in &slots {
                let offset = Days::new(u64::from(slot.weekday.num_days_from_monday()));
                let Some(date) = monday.checked_add_days(offset) else {
                    return wall_times;
                };
                if date < start_date {
                    continue;
                }
                if matches!(self.end, RecurrenceEnd::Until(until) if date > until) {
                    return wall_times;
                }
                wall_times.push((date, slot.start_time));
                if wall_times.len() >= limit {
                    return wall_times;
                }
            }
            week = monday.checked_add_days(step);
        }
        wall_times
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, Duration, TimeZone, Timelike};
    use proptest::prelude::*;

    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn time(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("valid time")
    }

    fn slot(weekday: Weekday, h: u32, m: u32) -> WeeklySlot {
        WeeklySlot {
            weekday,
            start_time: time(h, m),
        }
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.from_utc_datetime(&date(y, m, d).and_time(time(h, min)))
    }

    fn moscow() -> Tz {
        chrono_tz::Europe::Moscow
    }

    fn dates(occurrences: &[Occurrence]) -> Vec<NaiveDate> {
        occurrences.iter().map(|o| o.local_date).collect()
    }

    #[test]
    fn a_weekly_monday_and_wednesday_series_yields_four_occurrences() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 18, 0), slot(Weekday::Wed, 18, 0)],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(4),
        )
        .expect("valid rule");
        let occurrences = rule.occurrences();
        assert_eq!(
            dates(&occurrences),
            [
                date(2026, 3, 2),
                date(2026, 3, 4),
                date(2026, 3, 9),
                date(2026, 3, 11)
            ]
        );
        assert!(occurrences.iter().all(|o| o.local_time == time(18, 0)));
        assert_eq!(occurrences[0].start, utc(2026, 3, 2, 15, 0));
    }

    #[test]
    fn a_fortnightly_series_skips_every_other_week() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 10, 0)],
            2,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(3),
        )
        .expect("valid rule");
        assert_eq!(
            dates(&rule.occurrences()),
            [date(2026, 3, 2), date(2026, 3, 16), date(2026, 3, 30)]
        );
    }

    #[test]
    fn the_interval_counts_weeks_from_the_start_dates_week_even_mid_week() {
        // Week 0 is 2026-03-02..08 although the series starts on Wednesday the 4th.
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 10, 0), slot(Weekday::Thu, 10, 0)],
            2,
            moscow(),
            date(2026, 3, 4),
            RecurrenceEnd::Until(date(2026, 3, 31)),
        )
        .expect("valid rule");
        assert_eq!(
            dates(&rule.occurrences()),
            [
                date(2026, 3, 5),
                date(2026, 3, 16),
                date(2026, 3, 19),
                date(2026, 3, 30)
            ]
        );
    }

    #[test]
    fn the_until_date_is_inclusive() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 23, 30)],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Until(date(2026, 3, 16)),
        )
        .expect("valid rule");
        assert_eq!(
            dates(&rule.occurrences()),
            [date(2026, 3, 2), date(2026, 3, 9), date(2026, 3, 16)]
        );
    }

    #[test]
    fn a_series_starting_mid_week_begins_at_the_next_matching_slot() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 18, 0), slot(Weekday::Wed, 18, 0)],
            1,
            moscow(),
            date(2026, 3, 5),
            RecurrenceEnd::Count(2),
        )
        .expect("valid rule");
        assert_eq!(
            dates(&rule.occurrences()),
            [date(2026, 3, 9), date(2026, 3, 11)]
        );
    }

    #[test]
    fn several_slots_on_one_weekday_come_out_in_time_order() {
        let rule = Recurrence::new(
            vec![
                slot(Weekday::Sat, 18, 0),
                slot(Weekday::Sat, 9, 0),
                slot(Weekday::Fri, 20, 0),
            ],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(4),
        )
        .expect("valid rule");
        let starts: Vec<_> = rule.occurrences().iter().map(|o| o.start).collect();
        assert_eq!(
            starts,
            [
                utc(2026, 3, 6, 17, 0),
                utc(2026, 3, 7, 6, 0),
                utc(2026, 3, 7, 15, 0),
                utc(2026, 3, 13, 17, 0),
            ]
        );
    }

    #[test]
    fn a_series_keeps_its_wall_clock_time_across_dst() {
        // Berlin falls back on 2026-10-25: 18:00 is 16:00 UTC before and 17:00 UTC after.
        let rule = Recurrence::new(
            vec![slot(Weekday::Tue, 18, 0)],
            1,
            chrono_tz::Europe::Berlin,
            date(2026, 10, 13),
            RecurrenceEnd::Count(3),
        )
        .expect("valid rule");
        let occurrences = rule.occurrences();
        assert!(occurrences.iter().all(|o| o.local_time == time(18, 0)));
        let utc_hours: Vec<u32> = occurrences.iter().map(|o| o.start.hour()).collect();
        assert_eq!(utc_hours, [16, 16, 17]);
        assert_eq!(occurrences[2].start, utc(2026, 10, 27, 17, 0));
    }

    #[test]
    fn a_slot_skipped_by_spring_forward_moves_forward_by_the_gap() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Sun, 2, 30)],
            1,
            chrono_tz::Europe::Berlin,
            date(2026, 3, 22),
            RecurrenceEnd::Count(3),
        )
        .expect("valid rule");
        let occurrences = rule.occurrences();
        let walls: Vec<_> = occurrences
            .iter()
            .map(|o| (o.local_date, o.local_time))
            .collect();
        assert_eq!(
            walls,
            [
                (date(2026, 3, 22), time(2, 30)),
                (date(2026, 3, 29), time(3, 30)),
                (date(2026, 4, 5), time(2, 30)),
            ]
        );
        assert_eq!(occurrences[1].start, utc(2026, 3, 29, 1, 30));
    }

    #[test]
    fn a_slot_moved_by_a_gap_is_still_in_time_order() {
        // On 2026-03-29 the 02:30 slot becomes 03:30 and so follows the 03:00 one.
        let rule = Recurrence::new(
            vec![slot(Weekday::Sun, 2, 30), slot(Weekday::Sun, 3, 0)],
            1,
            chrono_tz::Europe::Berlin,
            date(2026, 3, 29),
            RecurrenceEnd::Count(2),
        )
        .expect("valid rule");
        let walls: Vec<_> = rule.occurrences().iter().map(|o| o.local_time).collect();
        assert_eq!(walls, [time(3, 0), time(3, 30)]);
    }

    #[test]
    fn an_ambiguous_slot_takes_the_earlier_instant() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Sun, 2, 30)],
            1,
            chrono_tz::Europe::Berlin,
            date(2026, 10, 25),
            RecurrenceEnd::Count(1),
        )
        .expect("valid rule");
        assert_eq!(rule.occurrences()[0].start, utc(2026, 10, 25, 0, 30));
    }

    #[test]
    fn exactly_366_occurrences_are_accepted_and_367_refused() {
        let every_day: Vec<_> = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ]
        .into_iter()
        .map(|weekday| slot(weekday, 8, 0))
        .collect();
        let start = date(2026, 3, 2);
        let last = start + Duration::days(365);
        let rule = Recurrence::new(
            every_day.clone(),
            1,
            moscow(),
            start,
            RecurrenceEnd::Until(last),
        )
        .expect("366 occurrences are allowed");
        assert_eq!(rule.occurrences().len(), MAX_OCCURRENCES);

        let err = Recurrence::new(
            every_day.clone(),
            1,
            moscow(),
            start,
            RecurrenceEnd::Until(last + Duration::days(1)),
        )
        .expect_err("367 occurrences");
        assert_eq!(
            err,
            RecurrenceError::TooManyOccurrences {
                until_date: last + Duration::days(1)
            }
        );
        assert_eq!(err.field(), "recurrence.until_date");
        assert!(err.to_string().contains("366"), "{err}");

        // A far-off end is refused as quickly as a near one.
        let far = Recurrence::new(
            every_day,
            1,
            moscow(),
            start,
            RecurrenceEnd::Until(NaiveDate::MAX),
        );
        assert!(matches!(
            far,
            Err(RecurrenceError::TooManyOccurrences { .. })
        ));
    }

    #[test]
    fn a_count_outside_1_to_366_is_refused() {
        for count in [0, 367, u32::MAX] {
            let err = Recurrence::new(
                vec![slot(Weekday::Mon, 18, 0)],
                1,
                moscow(),
                date(2026, 3, 2),
                RecurrenceEnd::Count(count),
            )
            .expect_err("count out of range");
            assert_eq!(err, RecurrenceError::CountOutOfRange(count));
            assert_eq!(err.field(), "recurrence.occurrence_count");
        }
    }

    #[test]
    fn a_rule_without_slots_is_refused() {
        let err = Recurrence::new(
            vec![],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(1),
        )
        .expect_err("no slots");
        assert_eq!(err, RecurrenceError::NoSlots);
        assert_eq!(err.field(), "recurrence.slots");
    }

    #[test]
    fn a_repeated_slot_is_refused_but_two_times_on_one_day_are_not() {
        let err = Recurrence::new(
            vec![
                slot(Weekday::Mon, 18, 0),
                slot(Weekday::Tue, 18, 0),
                slot(Weekday::Mon, 18, 0),
            ],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(3),
        )
        .expect_err("duplicate slot");
        assert_eq!(
            err,
            RecurrenceError::DuplicateSlot {
                weekday: Weekday::Mon,
                start_time: time(18, 0)
            }
        );
        assert_eq!(err.field(), "recurrence.slots");
        assert!(err.to_string().contains("Mon 18:00"), "{err}");
        assert!(
            Recurrence::new(
                vec![slot(Weekday::Mon, 18, 0), slot(Weekday::Mon, 19, 0)],
                1,
                moscow(),
                date(2026, 3, 2),
                RecurrenceEnd::Count(3),
            )
            .is_ok()
        );
    }

    #[test]
    fn an_interval_outside_1_to_52_is_refused() {
        for interval in [0, 53] {
            let err = Recurrence::new(
                vec![slot(Weekday::Mon, 18, 0)],
                interval,
                moscow(),
                date(2026, 3, 2),
                RecurrenceEnd::Count(3),
            )
            .expect_err("interval out of range");
            assert_eq!(err, RecurrenceError::IntervalOutOfRange(interval));
            assert_eq!(err.field(), "recurrence.interval_weeks");
        }
        assert!(
            Recurrence::new(
                vec![slot(Weekday::Mon, 18, 0)],
                52,
                moscow(),
                date(2026, 3, 2),
                RecurrenceEnd::Count(3),
            )
            .is_ok()
        );
    }

    #[test]
    fn an_until_date_before_the_start_is_refused() {
        let err = Recurrence::new(
            vec![slot(Weekday::Mon, 18, 0)],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Until(date(2026, 3, 1)),
        )
        .expect_err("until before start");
        assert_eq!(err.field(), "recurrence.until_date");
        assert_eq!(
            err.to_string(),
            "until_date 2026-03-01 is before start_date 2026-03-02"
        );
    }

    #[test]
    fn a_rule_without_any_occurrence_is_refused() {
        let err = Recurrence::new(
            vec![slot(Weekday::Fri, 18, 0)],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Until(date(2026, 3, 5)),
        )
        .expect_err("no friday in range");
        assert_eq!(
            err,
            RecurrenceError::NoOccurrences {
                start_date: date(2026, 3, 2),
                until_date: Some(date(2026, 3, 5))
            }
        );
        assert_eq!(err.field(), "recurrence.until_date");
        assert_eq!(
            err.to_string(),
            "the series would have no occurrence between start_date 2026-03-02 and until_date \
             2026-03-05"
        );
        // A count-bounded rule only runs out at the end of the calendar.
        let err = Recurrence::new(
            vec![slot(NaiveDate::MAX.weekday().pred(), 18, 0)],
            1,
            chrono_tz::UTC,
            NaiveDate::MAX,
            RecurrenceEnd::Count(1),
        )
        .expect_err("no slot left before the end of the calendar");
        assert_eq!(err.field(), "recurrence.start_date");
    }

    #[test]
    fn occurrences_from_restarts_the_rule_and_its_count() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 18, 0)],
            2,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Count(3),
        )
        .expect("valid rule");
        // From Wednesday 2026-03-11: that week is the new week 0, so the next Monday (week 1) is
        // skipped and the count of 3 runs from there.
        let from = date(2026, 3, 11);
        assert_eq!(
            dates(&rule.occurrences_from(from)),
            [date(2026, 3, 23), date(2026, 4, 6), date(2026, 4, 20)]
        );
        let restarted = rule.starting_from(from).expect("valid restarted rule");
        assert_eq!(restarted.start_date, from);
        assert_eq!(restarted.occurrences(), rule.occurrences_from(from));
    }

    #[test]
    fn occurrences_from_after_the_until_date_is_empty() {
        let rule = Recurrence::new(
            vec![slot(Weekday::Mon, 18, 0)],
            1,
            moscow(),
            date(2026, 3, 2),
            RecurrenceEnd::Until(date(2026, 3, 30)),
        )
        .expect("valid rule");
        assert_eq!(rule.occurrences_from(date(2026, 3, 10)).len(), 3);
        assert!(rule.occurrences_from(date(2026, 3, 31)).is_empty());
        assert!(matches!(
            rule.starting_from(date(2026, 3, 31)),
            Err(RecurrenceError::UntilBeforeStart { .. })
        ));
    }

    #[test]
    fn an_unvalidated_rule_still_yields_a_bounded_answer() {
        let rule = Recurrence {
            slots: vec![slot(Weekday::Mon, 18, 0)],
            interval_weeks: 0,
            zone: moscow(),
            start_date: date(2026, 3, 2),
            end: RecurrenceEnd::Until(NaiveDate::MAX),
        };
        assert_eq!(rule.occurrences().len(), MAX_OCCURRENCES);
        let no_slots = Recurrence {
            slots: vec![],
            ..rule
        };
        assert!(no_slots.occurrences().is_empty());
    }

    fn any_weekday() -> impl Strategy<Value = Weekday> {
        (0u8..7).prop_map(|n| Weekday::try_from(n).unwrap_or(Weekday::Mon))
    }

    fn any_slots() -> impl Strategy<Value = Vec<WeeklySlot>> {
        proptest::collection::vec((any_weekday(), 0u32..24, 0u32..4), 1..6).prop_map(|slots| {
            let mut slots: Vec<_> = slots
                .into_iter()
                .map(|(weekday, h, quarter)| slot(weekday, h, quarter * 15))
                .collect();
            // Shuffled input order is part of what is tested; only duplicates go.
            let mut seen = HashSet::new();
            slots.retain(|slot| seen.insert(*slot));
            slots
        })
    }

    proptest! {
        #[test]
        fn occurrences_follow_the_rule(
            slots in any_slots(),
            interval in 1u32..=52,
            start_offset in 0i64..3000,
            end_days in 0i64..800,
            count in 1u32..=366,
            by_count in any::<bool>(),
        ) {
            // Moscow has no DST, so wall times map to instants one to one.
            let start_date = date(2020, 1, 1) + Duration::days(start_offset);
            let end = if by_count {
                RecurrenceEnd::Count(count)
            } else {
                RecurrenceEnd::Until(start_date + Duration::days(end_days))
            };
            let Ok(rule) = Recurrence::new(slots.clone(), interval, moscow(), start_date, end) else {
                return Ok(());
            };
            let occurrences = rule.occurrences();
            prop_assert!(!occurrences.is_empty() && occurrences.len() <= MAX_OCCURRENCES);
            if let RecurrenceEnd::Count(count) = end {
                prop_assert_eq!(occurrences.len(), count as usize);
            }
            prop_assert!(occurrences.windows(2).all(|pair| pair[0].start < pair[1].start));
            let first_monday = week_start(start_date, Weekday::Mon);
            for occurrence in &occurrences {
                prop_assert!(occurrence.local_date >= start_date);
                if let RecurrenceEnd::Until(until) = end {
                    prop_assert!(occurrence.local_date <= until);
                }
                let weeks = (occurrence.local_date - first_monday).num_days() / 7;
                prop_assert_eq!(weeks % i64::from(interval), 0);
                let wall_slot = WeeklySlot {
                    weekday: occurrence.local_date.weekday(),
                    start_time: occurrence.local_time,
                };
                prop_assert!(slots.contains(&wall_slot));
            }
        }

        #[test]
        fn occurrences_never_panic_in_any_zone(
            slots in any_slots(),
            interval in 0u32..60,
            zone_index in 0usize..chrono_tz::TZ_VARIANTS.len(),
            start_days in -1_000_000i32..1_000_000,
            count in 0u32..400,
        ) {
            let start_date = NaiveDate::from_num_days_from_ce_opt(start_days)
                .unwrap_or(NaiveDate::MIN);
            let rule = Recurrence {
                slots,
                interval_weeks: interval,
                zone: chrono_tz::TZ_VARIANTS[zone_index],
                start_date,
                end: RecurrenceEnd::Count(count),
            };
            let _ = rule.validate();
            let occurrences = rule.occurrences();
            prop_assert!(occurrences.len() <= MAX_OCCURRENCES);
            prop_assert!(occurrences.windows(2).all(|pair| pair[0].start <= pair[1].start));
        }
    }
}
