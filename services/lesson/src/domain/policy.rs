//! The tutor's cancellation policy and how it judges a cancellation (PRODUCT.md §4: with enough
//! notice a cancellation is excused and free, late it is charged or counted as missed).

use chrono::{DateTime, TimeDelta, Utc};
use repit_proto::repit::common::v1::Money;
use repit_proto::repit::lesson::v1::{
    CancellationKind, CancellationPolicy, CancellingParty, LateCancellationFeeKind,
};

/// What the policy decided for one cancellation.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// Excused or late, before any waiver.
    pub kind: CancellationKind,
    /// Time from the cancellation to the start; zero once the start has passed.
    pub notice: TimeDelta,
    /// A fee is charged.
    pub fee_applies: bool,
    /// The fee, when it is known here (a fixed fee, or the lesson's price override); a fee of
    /// the tutor's default price is resolved by the payment service.
    pub fee: Option<Money>,
    /// The lesson counts as missed.
    pub counted_as_missed: bool,
    /// A late cancellation whose consequences the tutor waived.
    pub fee_waived: bool,
}

/// Judges a cancellation by `party` at `now` of a lesson starting at `start`.
pub fn judge(
    policy: &CancellationPolicy,
    party: CancellingParty,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    price_override: Option<&Money>,
    waive_fee: bool,
) -> Judgement {
    let notice = (start - now).max(TimeDelta::zero());
    let required = TimeDelta::hours(i64::from(policy.notice_hours.max(0)));
    let late = party == CancellingParty::Student && notice < required;
    let kind = if late {
        CancellationKind::Late
    } else {
        CancellationKind::Excused
    };
    if !late || waive_fee {
        return Judgement {
            kind,
            notice,
            fee_applies: false,
            fee: None,
            counted_as_missed: false,
            fee_waived: late && waive_fee,
        };
    }
    let (fee_applies, fee) = match policy.late_cancellation_fee_kind() {
        LateCancellationFeeKind::FixedAmount => (
            policy.late_cancellation_fixed_fee.is_some(),
            policy.late_cancellation_fixed_fee.clone(),
        ),
        LateCancellationFeeKind::LessonPrice => (true, price_override.cloned()),
        LateCancellationFeeKind::None | LateCancellationFeeKind::Unspecified => (false, None),
    };
    Judgement {
        kind,
        notice,
        fee_applies,
        fee,
        counted_as_missed: policy.late_cancellation_counts_as_missed,
        fee_waived: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CancellationPolicy {
        CancellationPolicy {
            notice_hours: 24,
            late_cancellation_fee_kind: LateCancellationFeeKind::LessonPrice as i32,
            late_cancellation_fixed_fee: None,
            late_cancellation_counts_as_missed: true,
        }
    }

    fn at(hour: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + TimeDelta::hours(hour.into())
    }

    #[test]
    fn a_student_cancelling_with_enough_notice_is_excused() {
        let judgement = judge(
            &policy(),
            CancellingParty::Student,
            at(48),
            at(0),
            None,
            false,
        );
        assert_eq!(judgement.kind, CancellationKind::Excused);
        assert!(!judgement.fee_applies && !judgement.counted_as_missed);
    }

    #[test]
    fn a_late_student_cancellation_costs_the_lesson_price_and_counts_as_missed() {
        let price = Money {
            minor_units: 150_000,
            currency: "RUB".into(),
        };
        let judgement = judge(
            &policy(),
            CancellingParty::Student,
            at(10),
            at(0),
            Some(&price),
            false,
        );
        assert_eq!(judgement.kind, CancellationKind::Late);
        assert_eq!(judgement.fee, Some(price));
        assert!(judgement.fee_applies && judgement.counted_as_missed);
        assert_eq!(judgement.notice, TimeDelta::hours(10));
    }

    #[test]
    fn the_tutor_cancelling_late_is_still_excused() {
        let judgement = judge(&policy(), CancellingParty::Tutor, at(1), at(0), None, false);
        assert_eq!(judgement.kind, CancellationKind::Excused);
    }

    #[test]
    fn a_waived_late_cancellation_is_late_but_free() {
        let judgement = judge(
            &policy(),
            CancellingParty::Student,
            at(1),
            at(0),
            None,
            true,
        );
        assert_eq!(judgement.kind, CancellationKind::Late);
        assert!(judgement.fee_waived && !judgement.fee_applies && !judgement.counted_as_missed);
    }
}
