//! Monthly recurring revenue (MRR): what a subscription's plan promises to pay per month, over the subscription's
//! life. Built from plan prices, not from invoices (as Lago and Stripe do): usage charges, one-off invoices, coupons
//! and taxes are not in it, and a usage-heavy customer can pay many times its MRR.
//!
//! - A plan's fee is normalized to a month: monthly ×1, quarterly ÷3, semiannual ÷6, yearly ÷12, weekly ×52÷12,
//!   then rounded half-up to the currency's minor unit.
//! - A subscription counts while its fee accrues ([`crate::subscription::State::billable`]): not during a free
//!   trial, a pause or a dunning suspension, and not after it ended.
//! - Changes take effect at their exact instant (an upgrade at once, a downgrade or a cancellation at period end at
//!   that period's end), as usage attribution sees them.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::invoicing::{phase_at, phases, PlanTerms};
use crate::money::{round_to_minor, RoundingMode};
use crate::period::{BillingPeriod, Interval};
use crate::proration::ProrationConvention;
use crate::subscription::{segments_with, Subscription};

/// A stretch of a subscription's life with a constant MRR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MrrSegment {
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive; `None` while it lasts.
    pub to: Option<DateTime<Utc>>,
    /// Index of the plan in force.
    pub plan: usize,
    /// The plan's fee normalized to a month, rounded to the minor unit.
    pub mrr: Decimal,
}

/// A fee of one period of `interval`, per month, rounded half-up to the currency's minor unit.
pub fn monthly(fee: Decimal, interval: Interval, currency: Currency) -> Result<Decimal> {
    let per_month = match interval {
        Interval::Monthly => Some(fee),
        Interval::Quarterly => fee.checked_div(Decimal::from(3)),
        Interval::Semiannual => fee.checked_div(Decimal::from(6)),
        Interval::Yearly => fee.checked_div(Decimal::from(12)),
        Interval::Weekly => fee
            .checked_mul(Decimal::from(52))
            .and_then(|x| x.checked_div(Decimal::from(12))),
    }
    .ok_or(Error::Overflow("monthly recurring revenue"))?;
    Ok(round_to_minor(per_month, currency, RoundingMode::HalfUp))
}

/// Where the timeline of a subscription that has not ended stops: far beyond any billing.
fn far_future() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9000, 1, 1, 0, 0, 0)
        .single()
        .expect("valid")
}

/// The subscription's MRR over its life: its segments with an MRR above zero, in order (adjacent segments with the
/// same plan and MRR merged). `plans` are the terms its plan indices point to.
pub fn timeline(
    sub: &Subscription,
    plans: &[PlanTerms],
    currency: Currency,
    tz: Tz,
) -> Result<Vec<MrrSegment>> {
    let phases = phases(sub, plans, ProrationConvention::Seconds, tz)?;
    let far = far_future();
    let whole = BillingPeriod {
        start: sub.started_at,
        end: far,
        start_date: crate::period::local_date(sub.started_at, tz),
        end_date: NaiveDate::from_ymd_opt(8999, 12, 31).expect("valid"),
    };
    let period_end_at = |t| -> Result<DateTime<Utc>> {
        Ok(phase_at(&phases, t)?.schedule.period_containing(t)?.end)
    };
    let segs = segments_with(
        sub,
        &period_end_at,
        ProrationConvention::Seconds,
        tz,
        &whole,
    )?;
    let mut out: Vec<MrrSegment> = Vec::new();
    for s in segs.iter().filter(|s| s.state.billable()) {
        let terms = plans
            .get(s.state.plan)
            .ok_or_else(|| Error::InvalidRequest(format!("unknown plan index {}", s.state.plan)))?;
        let mrr = monthly(terms.fee, terms.interval, currency)?;
        if mrr.is_zero() {
            continue;
        }
        let to = (s.to < far).then_some(s.to);
        match out.last_mut() {
            Some(last)
                if last.to == Some(s.from) && last.plan == s.state.plan && last.mrr == mrr =>
            {
                last.to = to;
            }
            _ => out.push(MrrSegment {
                from: s.from,
                to,
                plan: s.state.plan,
                mrr,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::BillingAnchor;
    use crate::subscription::{Change, ChangeKind};
    use rust_decimal_macros::dec;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn terms(fee: Decimal, interval: Interval) -> PlanTerms {
        PlanTerms {
            fee,
            interval,
            pay_in_advance: true,
            anchor: BillingAnchor::Calendar,
        }
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn fees_are_normalized_to_a_month_and_rounded_half_up() {
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            monthly(dec!(100), Interval::Monthly, eur()).unwrap(),
            dec!(100)
        );
        assert_eq!(
            monthly(dec!(100), Interval::Quarterly, eur()).unwrap(),
            dec!(33.33)
        );
        assert_eq!(
            monthly(dec!(100), Interval::Semiannual, eur()).unwrap(),
            dec!(16.67)
        );
        assert_eq!(
            monthly(dec!(1000), Interval::Yearly, eur()).unwrap(),
            dec!(83.33)
        );
        // 10 × 52 / 12 = 43.333…
        assert_eq!(
            monthly(dec!(10), Interval::Weekly, eur()).unwrap(),
            dec!(43.33)
        );
        assert_eq!(
            monthly(dec!(1000), Interval::Yearly, jpy).unwrap(),
            dec!(83)
        );
        assert_eq!(
            monthly(dec!(1002), Interval::Yearly, jpy).unwrap(),
            dec!(84)
        );
    }

    #[test]
    fn trial_upgrade_pause_and_cancellation_at_period_end_shape_the_timeline() {
        let plans = [
            terms(dec!(50), Interval::Monthly),
            terms(dec!(1200), Interval::Yearly),
            terms(dec!(20), Interval::Monthly),
        ];
        let sub = Subscription {
            started_at: at(2026, 1, 1),
            trial_ends_at: Some(at(2026, 1, 15)),
            plan: 0,
            changes: vec![
                Change {
                    at: at(2026, 3, 10),
                    kind: ChangeKind::Upgrade { plan: 1 },
                },
                Change {
                    at: at(2026, 5, 1),
                    kind: ChangeKind::Pause,
                },
                Change {
                    at: at(2026, 6, 1),
                    kind: ChangeKind::Resume,
                },
                Change {
                    at: at(2026, 7, 20),
                    kind: ChangeKind::Cancel { immediate: false },
                },
            ],
        };
        let t = timeline(&sub, &plans, eur(), Tz::UTC).unwrap();
        assert_eq!(
            t,
            vec![
                MrrSegment {
                    from: at(2026, 1, 15),
                    to: Some(at(2026, 3, 10)),
                    plan: 0,
                    mrr: dec!(50),
                },
                MrrSegment {
                    from: at(2026, 3, 10),
                    to: Some(at(2026, 5, 1)),
                    plan: 1,
                    mrr: dec!(100),
                },
                // The yearly plan's period started on the upgrade: the cancellation at period end ends it then.
                MrrSegment {
                    from: at(2026, 6, 1),
                    to: Some(at(2027, 3, 10)),
                    plan: 1,
                    mrr: dec!(100),
                },
            ]
        );
    }

    #[test]
    fn a_downgrade_waits_for_the_period_end_and_a_running_subscription_has_no_end() {
        let plans = [
            terms(dec!(50), Interval::Monthly),
            terms(dec!(20), Interval::Monthly),
        ];
        let sub = Subscription {
            started_at: at(2026, 1, 1),
            trial_ends_at: None,
            plan: 0,
            changes: vec![Change {
                at: at(2026, 2, 14),
                kind: ChangeKind::Downgrade { plan: 1 },
            }],
        };
        let t = timeline(&sub, &plans, eur(), Tz::UTC).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].to, t[0].mrr), (Some(at(2026, 3, 1)), dec!(50)));
        assert_eq!(
            (t[1].from, t[1].to, t[1].mrr),
            (at(2026, 3, 1), None, dec!(20))
        );
    }

    #[test]
    fn free_plans_and_a_cancellation_during_the_trial_have_no_mrr() {
        let plans = [
            terms(dec!(0), Interval::Monthly),
            terms(dec!(30), Interval::Monthly),
        ];
        let free = Subscription {
            started_at: at(2026, 1, 1),
            trial_ends_at: None,
            plan: 0,
            changes: vec![],
        };
        assert!(timeline(&free, &plans, eur(), Tz::UTC).unwrap().is_empty());
        let trial = Subscription {
            started_at: at(2026, 1, 1),
            trial_ends_at: Some(at(2026, 1, 31)),
            plan: 1,
            changes: vec![Change {
                at: at(2026, 1, 10),
                kind: ChangeKind::Cancel { immediate: false },
            }],
        };
        assert!(timeline(&trial, &plans, eur(), Tz::UTC).unwrap().is_empty());
    }
}
