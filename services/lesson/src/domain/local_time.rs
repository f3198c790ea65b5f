//! Time-zone helpers: turning the wall-clock times people type into instants and back.
//!
//! Lessons are entered as a local date and time in an IANA zone and stored as UTC instants. The
//! contract (`Recurrence` in `lesson.proto`) fixes what happens when a wall time is not a single
//! instant: a time skipped by a spring-forward gap moves forward by the length of the gap (RFC 5545
//! §3.3.5 reads it with the offset in force before the gap), and a time repeated by a fall-back
//! overlap takes the earlier instant. Everything here is total: no date, time or zone makes these
//! functions panic, because they run on user input inside request handlers.

use chrono::{
    DateTime, Datelike, Days, FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime,
    Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// Longest name echoed back in an [`InvalidZone`] error; longer input is cut, so that a huge field
/// is not copied into logs and error details.
const MAX_ECHOED_NAME_CHARS: usize = 64;

/// How far on either side of a skipped wall time the transition that skipped it is looked for.
/// UTC offsets stay well within ±26 h (the widest in tzdb are about ±16 h), so the instant whose
/// wall time is the skipped one, read with any real offset, lies inside this window.
const GAP_SEARCH_WINDOW_SECS: i64 = 26 * 3600;

/// A time-zone name that is not an IANA zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidZone {
    /// No name was given.
    #[error("time zone is empty; expected an IANA name such as Europe/Berlin")]
    Empty,
    /// The name is not in the IANA time-zone database.
    #[error("unknown time zone \"{name}\"; expected an IANA name such as Europe/Berlin")]
    Unknown {
        /// The name as given (cut to 64 characters).
        name: String,
    },
}

/// Parses an IANA time-zone name such as `Europe/Berlin` (exact spelling, as tzdb has it).
pub fn parse_zone(name: &str) -> Result<Tz, InvalidZone> {
    if name.is_empty() {
        return Err(InvalidZone::Empty);
    }
    name.parse::<Tz>().map_err(|_| InvalidZone::Unknown {
        name: name.chars().take(MAX_ECHOED_NAME_CHARS).collect(),
    })
}

/// The instant at which the wall clock in `zone` shows `time` on `date`.
///
/// A wall time skipped by a spring-forward gap moves forward by the gap (02:30 on a day the clocks
/// jump from 02:00 to 03:00 is 03:30); a wall time that occurs twice (fall back) is the earlier of
/// the two instants. Wall times beyond the range chrono can represent clamp to its ends.
pub fn local_to_utc(zone: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let local = date.and_time(time);
    match zone.from_local_datetime(&local) {
        MappedLocalTime::Single(instant) => instant.to_utc(),
        MappedLocalTime::Ambiguous(a, b) => a.to_utc().min(b.to_utc()),
        MappedLocalTime::None => match skipping_transition(zone, local) {
            Some(gap) => local
                .checked_sub_offset(gap.offset_before)
                .map_or(gap.first_instant_after, |utc| utc.and_utc()),
            None => clamp_out_of_range(zone, local),
        },
    }
}

/// The UTC bounds `[start, end)` of the local day `date` in `zone`.
///
/// A day is 24 h long except on DST days (23 h or 25 h, or whatever the zone's change is). When the
/// zone skips midnight itself (America/Santiago springs forward from 00:00 to 01:00) the day starts
/// at its first existing instant; a day skipped entirely (Pacific/Apia, 2011-12-30) is empty.
pub fn day_bounds(zone: Tz, date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = start_of_day(zone, date);
    let end = match date.succ_opt() {
        Some(next) => start_of_day(zone, next),
        None => DateTime::<Utc>::MAX_UTC,
    };
    // Only a pathological zone table could put the next day's start first; never return an
    // inverted range.
    (start, end.max(start))
}

/// The first day of the week that contains `date`, for weeks starting on `first_day`.
pub fn week_start(date: NaiveDate, first_day: Weekday) -> NaiveDate {
    let days_back =
        (date.weekday().num_days_from_monday() + 7 - first_day.num_days_from_monday()) % 7;
    date.checked_sub_days(Days::new(u64::from(days_back)))
        .unwrap_or(NaiveDate::MIN)
}

/// The wall-clock date and time in `zone` at `instant` (clamped to chrono's range at its very ends).
pub fn to_local(zone: Tz, instant: DateTime<Utc>) -> NaiveDateTime {
    let offset = zone.offset_from_utc_datetime(&instant.naive_utc()).fix();
    match instant.naive_utc().checked_add_offset(offset) {
        Some(local) => local,
        None if offset.local_minus_utc() > 0 => NaiveDateTime::MAX,
        None => NaiveDateTime::MIN,
    }
}

/// The first instant of `date` in `zone`: midnight, or the end of a gap that skips midnight.
fn start_of_day(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    match zone.from_local_datetime(&midnight) {
        MappedLocalTime::Single(instant) => instant.to_utc(),
        MappedLocalTime::Ambiguous(a, b) => a.to_utc().min(b.to_utc()),
        // Not `local_to_utc`: when a gap starts before midnight (23:30 → 00:30), moving midnight
        // forward by the gap would land at 01:00, after the day's first instant (00:30).
        MappedLocalTime::None => match skipping_transition(zone, midnight) {
            Some(gap) => gap.first_instant_after,
            None => clamp_out_of_range(zone, midnight),
        },
    }
}

/// A change of UTC offset that makes some wall times never occur.
struct Gap {
    /// The offset in force just before the change.
    offset_before: FixedOffset,
    /// The first instant read with the new offset.
    first_instant_after: DateTime<Utc>,
}

/// The transition that skips the wall time `local` in `zone`, or `None` when it cannot be found
/// (only at the ends of chrono's range).
///
/// tzdb offsets are whole seconds and change on whole seconds, so a binary search over UTC seconds
/// for the point where the wall clock jumps over `local` finds it exactly. Unlike reading the
/// offset a day earlier, it stays exact when another transition falls within a day of the gap:
/// it can only stop at two neighbouring seconds whose wall times straddle `local`, a forward jump.
fn skipping_transition(zone: Tz, local: NaiveDateTime) -> Option<Gap> {
    let target = local.and_utc().timestamp();
    let wall_at = |secs: i64| -> Option<(i64, FixedOffset)> {
        let instant = DateTime::<Utc>::from_timestamp(secs, 0)?;
        let offset = zone.offset_from_utc_datetime(&instant.naive_utc()).fix();
        Some((
            secs.checked_add(i64::from(offset.local_minus_utc()))?,
            offset,
        ))
    };
    let mut lo = target.checked_sub(GAP_SEARCH_WINDOW_SECS)?;
    let mut hi = target.checked_add(GAP_SEARCH_WINDOW_SECS)?;
    // Invariant: the wall clock reads before `local` at `lo` and after it at `hi`.
    let (wall_lo, _) = wall_at(lo)?;
    let (wall_hi, _) = wall_at(hi)?;
    if wall_lo >= target || wall_hi <= target {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let (wall_mid, _) = wall_at(mid)?;
        if wall_mid < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (_, offset_before) = wall_at(lo)?;
    Some(Gap {
        offset_before,
        first_instant_after: DateTime::<Utc>::from_timestamp(hi, 0)?,
    })
}

/// Best answer for a wall time whose instant chrono cannot represent: the nearest end of the range.
fn clamp_out_of_range(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let offset = zone.offset_from_utc_datetime(&local).fix();
    match local.checked_sub_offset(offset) {
        Some(utc) => utc.and_utc(),
        None if offset.local_minus_utc() > 0 => DateTime::<Utc>::MIN_UTC,
        None => DateTime::<Utc>::MAX_UTC,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use proptest::prelude::*;

    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn time(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("valid time")
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        date(y, m, d).and_time(time(h, min)).and_utc()
    }

    fn zone(name: &str) -> Tz {
        parse_zone(name).expect("known zone")
    }

    #[test]
    fn an_iana_name_parses() {
        assert_eq!(parse_zone("Europe/Berlin"), Ok(chrono_tz::Europe::Berlin));
        assert_eq!(parse_zone("UTC"), Ok(chrono_tz::UTC));
    }

    #[test]
    fn an_empty_zone_is_refused() {
        assert_eq!(parse_zone(""), Err(InvalidZone::Empty));
    }

    #[test]
    fn an_unknown_zone_is_refused_naming_the_input() {
        let err = parse_zone("Mars/Olympus_Mons").expect_err("unknown zone");
        assert!(err.to_string().contains("Mars/Olympus_Mons"), "{err}");
        assert!(parse_zone("+03:00").is_err());
        assert!(parse_zone(" Europe/Berlin").is_err());
    }

    #[test]
    fn a_huge_zone_name_is_cut_in_the_error() {
        let name = "x".repeat(10_000);
        let InvalidZone::Unknown { name: echoed } = parse_zone(&name).expect_err("unknown") else {
            panic!("expected Unknown");
        };
        assert_eq!(echoed.chars().count(), 64);
    }

    #[test]
    fn moscow_has_a_fixed_offset_of_three_hours() {
        let moscow = zone("Europe/Moscow");
        for (d, expected) in [
            (date(2026, 1, 15), utc(2026, 1, 15, 15, 0)),
            (date(2026, 3, 29), utc(2026, 3, 29, 15, 0)),
            (date(2026, 7, 1), utc(2026, 7, 1, 15, 0)),
            (date(2026, 10, 25), utc(2026, 10, 25, 15, 0)),
        ] {
            assert_eq!(local_to_utc(moscow, d, time(18, 0)), expected);
        }
        let (start, end) = day_bounds(moscow, date(2026, 3, 29));
        assert_eq!(start, utc(2026, 3, 28, 21, 0));
        assert_eq!(end - start, Duration::hours(24));
    }

    #[test]
    fn a_time_skipped_in_berlin_moves_forward_by_the_gap() {
        let berlin = zone("Europe/Berlin");
        let instant = local_to_utc(berlin, date(2026, 3, 29), time(2, 30));
        assert_eq!(instant, utc(2026, 3, 29, 1, 30));
        assert_eq!(
            to_local(berlin, instant),
            date(2026, 3, 29).and_time(time(3, 30))
        );
        // The first skipped minute and the first minute after the gap.
        assert_eq!(
            local_to_utc(berlin, date(2026, 3, 29), time(2, 0)),
            utc(2026, 3, 29, 1, 0)
        );
        assert_eq!(
            local_to_utc(berlin, date(2026, 3, 29), time(3, 0)),
            utc(2026, 3, 29, 1, 0)
        );
    }

    #[test]
    fn a_time_repeated_in_berlin_takes_the_earlier_instant() {
        let berlin = zone("Europe/Berlin");
        // 02:30 happens first in CEST (+2), then again in CET (+1).
        let instant = local_to_utc(berlin, date(2026, 10, 25), time(2, 30));
        assert_eq!(instant, utc(2026, 10, 25, 0, 30));
        assert_eq!(
            local_to_utc(berlin, date(2026, 10, 25), time(3, 0)),
            utc(2026, 10, 25, 2, 0)
        );
    }

    #[test]
    fn berlin_dst_days_are_23_and_25_hours_long() {
        let berlin = zone("Europe/Berlin");
        let (start, end) = day_bounds(berlin, date(2026, 3, 29));
        assert_eq!(start, utc(2026, 3, 28, 23, 0));
        assert_eq!(end, utc(2026, 3, 29, 22, 0));
        let (start, end) = day_bounds(berlin, date(2026, 10, 25));
        assert_eq!(start, utc(2026, 10, 24, 22, 0));
        assert_eq!(end, utc(2026, 10, 25, 23, 0));
        assert_eq!(end - start, Duration::hours(25));
    }

    #[test]
    fn new_york_springs_forward_and_falls_back() {
        let new_york = zone("America/New_York");
        let skipped = local_to_utc(new_york, date(2026, 3, 8), time(2, 30));
        assert_eq!(skipped, utc(2026, 3, 8, 7, 30));
        assert_eq!(
            to_local(new_york, skipped),
            date(2026, 3, 8).and_time(time(3, 30))
        );
        // 01:30 happens first in EDT (-4), then in EST (-5).
        let repeated = local_to_utc(new_york, date(2026, 11, 1), time(1, 30));
        assert_eq!(repeated, utc(2026, 11, 1, 5, 30));
        let (start, end) = day_bounds(new_york, date(2026, 3, 8));
        assert_eq!(
            (start, end - start),
            (utc(2026, 3, 8, 5, 0), Duration::hours(23))
        );
        let (start, end) = day_bounds(new_york, date(2026, 11, 1));
        assert_eq!(
            (start, end - start),
            (utc(2026, 11, 1, 4, 0), Duration::hours(25))
        );
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_its_first_existing_instant() {
        // Chile springs forward from 00:00 (-4) to 01:00 (-3) on the first Sunday of September.
        let santiago = zone("America/Santiago");
        let (start, end) = day_bounds(santiago, date(2026, 9, 6));
        assert_eq!(start, utc(2026, 9, 6, 4, 0));
        assert_eq!(
            to_local(santiago, start),
            date(2026, 9, 6).and_time(time(1, 0))
        );
        assert_eq!(end, utc(2026, 9, 7, 3, 0));
        assert_eq!(end - start, Duration::hours(23));
        // Lebanon did the same at midnight on the last Sunday of March.
        let beirut = zone("Asia/Beirut");
        let (start, end) = day_bounds(beirut, date(2022, 3, 27));
        assert_eq!(
            to_local(beirut, start),
            date(2022, 3, 27).and_time(time(1, 0))
        );
        assert_eq!(end - start, Duration::hours(23));
    }

    #[test]
    fn a_day_skipped_entirely_is_empty() {
        // Samoa moved across the date line: 2011-12-29 23:59:59 (-10) was followed by 12-31 00:00.
        let apia = zone("Pacific/Apia");
        let (start, end) = day_bounds(apia, date(2011, 12, 30));
        assert_eq!(start, end);
        assert_eq!(
            to_local(apia, start),
            date(2011, 12, 31).and_time(time(0, 0))
        );
        let noon = local_to_utc(apia, date(2011, 12, 30), time(12, 0));
        assert_eq!(
            to_local(apia, noon),
            date(2011, 12, 31).and_time(time(12, 0))
        );
    }

    #[test]
    fn a_gap_that_starts_before_midnight_still_starts_the_day_at_its_end() {
        // Kiribati's Line Islands skipped 1994-12-31 (-10 → +14): the day after 12-30 is 1995-01-01.
        let kiritimati = zone("Pacific/Kiritimati");
        let (start, end) = day_bounds(kiritimati, date(1994, 12, 31));
        assert_eq!(start, end);
        let (start, _) = day_bounds(kiritimati, date(1995, 1, 1));
        assert_eq!(
            to_local(kiritimati, start),
            date(1995, 1, 1).and_time(time(0, 0))
        );
    }

    #[test]
    fn every_day_of_2026_in_every_zone_has_sane_bounds() {
        for &tz in chrono_tz::TZ_VARIANTS.iter() {
            let mut day = date(2026, 1, 1);
            let mut previous_end = None;
            while day.year() == 2026 {
                let (start, end) = day_bounds(tz, day);
                assert!(start <= end, "{tz} {day}");
                assert!(end - start <= Duration::hours(26), "{tz} {day}");
                if let Some(previous_end) = previous_end {
                    assert_eq!(previous_end, start, "{tz} {day}: days tile the timeline");
                }
                assert_eq!(to_local(tz, start).date(), day, "{tz} {day}");
                previous_end = Some(end);
                day = day.succ_opt().expect("2026 has a successor");
            }
        }
    }

    #[test]
    fn every_2026_transition_in_every_zone_follows_the_contract() {
        let offset_at =
            |tz: Tz, at: DateTime<Utc>| tz.offset_from_utc_datetime(&at.naive_utc()).fix();
        let year_start = utc(2026, 1, 1, 0, 0);
        let mut gaps = 0;
        let mut overlaps = 0;
        for &tz in chrono_tz::TZ_VARIANTS.iter() {
            let mut hour = year_start;
            while hour < utc(2027, 1, 1, 0, 0) {
                let next_hour = hour + Duration::hours(1);
                let before = offset_at(tz, hour);
                let after = offset_at(tz, next_hour);
                if before != after {
                    // Transitions fall on whole minutes today; find the one in this hour.
                    let transition = (1..=60)
                        .map(|m| hour + Duration::minutes(m))
                        .find(|&at| offset_at(tz, at) == after)
                        .expect("the offset changes within the hour");
                    let wall_before = transition.naive_utc().checked_add_offset(before);
                    let wall_after = transition.naive_utc().checked_add_offset(after);
                    let (wall_before, wall_after) = (
                        wall_before.expect("in range"),
                        wall_after.expect("in range"),
                    );
                    if wall_after > wall_before {
                        gaps += 1;
                        // The first and the last skipped minute both read with the old offset.
                        for local in [wall_before, wall_after - Duration::minutes(1)] {
                            let instant = local_to_utc(tz, local.date(), local.time());
                            let expected = local.checked_sub_offset(before).expect("in range");
                            assert_eq!(instant.naive_utc(), expected, "{tz} {local}");
                            assert_eq!(to_local(tz, instant), local + (wall_after - wall_before));
                        }
                    } else {
                        overlaps += 1;
                        // The first and the last repeated minute take the earlier instant.
                        for local in [wall_after, wall_before - Duration::minutes(1)] {
                            let instant = local_to_utc(tz, local.date(), local.time());
                            let expected = local.checked_sub_offset(before).expect("in range");
                            assert_eq!(instant.naive_utc(), expected, "{tz} {local}");
                        }
                    }
                }
                hour = next_hour;
            }
        }
        assert!(
            gaps > 100 && overlaps > 100,
            "{gaps} gaps, {overlaps} overlaps"
        );
    }

    #[test]
    fn the_week_start_depends_on_the_first_day() {
        let wednesday = date(2026, 10, 28);
        assert_eq!(week_start(wednesday, Weekday::Mon), date(2026, 10, 26));
        assert_eq!(week_start(wednesday, Weekday::Sun), date(2026, 10, 25));
        assert_eq!(week_start(wednesday, Weekday::Wed), wednesday);
        assert_eq!(week_start(wednesday, Weekday::Thu), date(2026, 10, 22));
        assert_eq!(week_start(NaiveDate::MIN, Weekday::Mon), NaiveDate::MIN);
    }

    #[test]
    fn the_ends_of_chronos_range_do_not_panic() {
        for &tz in chrono_tz::TZ_VARIANTS.iter() {
            for local in [NaiveDateTime::MIN, NaiveDateTime::MAX] {
                let instant = local_to_utc(tz, local.date(), local.time());
                let _ = to_local(tz, instant);
                let _ = day_bounds(tz, local.date());
            }
            let _ = to_local(tz, DateTime::<Utc>::MIN_UTC);
            let _ = to_local(tz, DateTime::<Utc>::MAX_UTC);
        }
    }

    fn any_zone() -> impl Strategy<Value = Tz> {
        proptest::sample::select(chrono_tz::TZ_VARIANTS.to_vec())
    }

    fn any_time() -> impl Strategy<Value = NaiveTime> {
        // Nanoseconds past 10^9 are chrono's leap second, valid only in the 59th second.
        (0u32..86_400, 0u32..2_000_000_000).prop_map(|(secs, nanos)| {
            NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
                .or_else(|| {
                    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos % 1_000_000_000)
                })
                .unwrap_or(NaiveTime::MIN)
        })
    }

    fn date_between(first: NaiveDate, last: NaiveDate) -> impl Strategy<Value = NaiveDate> {
        (first.num_days_from_ce()..=last.num_days_from_ce())
            .prop_map(|days| NaiveDate::from_num_days_from_ce_opt(days).unwrap_or(NaiveDate::MIN))
    }

    proptest! {
        #[test]
        fn local_to_utc_never_panics(
            tz in any_zone(),
            day in date_between(NaiveDate::MIN, NaiveDate::MAX),
            t in any_time(),
        ) {
            let instant = local_to_utc(tz, day, t);
            let _ = to_local(tz, instant);
            let _ = day_bounds(tz, day);
        }

        #[test]
        fn an_existing_unambiguous_wall_time_round_trips(
            tz in any_zone(),
            day in date_between(date(1, 1, 1), date(9999, 12, 31)),
            t in any_time(),
        ) {
            let local = day.and_time(t);
            let instant = local_to_utc(tz, day, t);
            match tz.from_local_datetime(&local) {
                MappedLocalTime::Single(_) => prop_assert_eq!(to_local(tz, instant), local),
                MappedLocalTime::Ambiguous(a, b) => {
                    prop_assert_eq!(to_local(tz, instant), local);
                    prop_assert_eq!(instant, a.to_utc().min(b.to_utc()));
                }
                MappedLocalTime::None => {
                    let gap = to_local(tz, instant) - local;
                    prop_assert!(gap > Duration::zero() && gap <= Duration::hours(24));
                    // Read with the offset in force before the gap, the instant shows `local`.
                    let before = tz.offset_from_utc_datetime(&(instant - gap).naive_utc()).fix();
                    prop_assert_eq!(instant.naive_utc().checked_add_offset(before), Some(local));
                }
            }
        }
    }
}
