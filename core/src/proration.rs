//! Proration of subscription fees over part of a period.
//!
//! Three conventions, selectable per tenant or plan:
//!
//! * `days` (default, Lago): the factor is the number of service days over the number of days of the
//!   actual period, counting the first and the last service day inclusively. Kept at full precision.
//!   Example: €100/month, service Jan 15–31 of a 31-day January → 17/31 → €54.84.
//! * `days_exclusive_end` (Kill Bill): days from start to an exclusive end date over the period length,
//!   with the factor rounded to 9 decimals half-up before it multiplies the fee.
//!   Example: $12/month kept for 22 of 28 days → 0.785714286 × 12 = 9.428571432 → $9.43.
//! * `seconds` (Stripe): the exact seconds of service over the seconds of the period.
//!   Example: $10 → $20 at exactly half of the period → −$5.00 + $10.00 = +$5.00.
//!
//! Day conventions work on local dates: a change on any time of local day X takes effect from the start
//! of X. They differ on immediate cancellation: under `days` the cancellation day is the last service day
//! (billed); under `days_exclusive_end` the cancellation date is the exclusive end (not billed).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::period::{local_date, local_midnight_utc, BillingPeriod};

/// Decimals kept by the Kill Bill convention's proration factor.
pub const KILL_BILL_FACTOR_DECIMALS: u32 = 9;

/// How a partial period's fee is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProrationConvention {
    /// Whole local days, inclusive count, over the actual period length (Lago).
    #[default]
    Days,
    /// Whole local days to an exclusive end, factor rounded to 9 decimals half-up (Kill Bill).
    DaysExclusiveEnd,
    /// Exact seconds over the period's seconds (Stripe).
    Seconds,
}

/// What a change does to the instant it takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEdge {
    /// The change starts something (start, upgrade, resume, trial end, pause).
    Begin,
    /// An immediate cancellation ends service.
    Cancel,
}

impl ProrationConvention {
    /// The instant a change made at `t` takes effect for billing under this convention.
    pub fn effective_instant(self, t: DateTime<Utc>, edge: ChangeEdge, tz: Tz) -> DateTime<Utc> {
        let day = local_date(t, tz);
        match (self, edge) {
            (ProrationConvention::Seconds, _) => t,
            (ProrationConvention::DaysExclusiveEnd, _)
            | (ProrationConvention::Days, ChangeEdge::Begin) => local_midnight_utc(day, tz),
            // Lago bills the cancellation day itself: service ends at the next local midnight.
            (ProrationConvention::Days, ChangeEdge::Cancel) => match day.succ_opt() {
                Some(next) => local_midnight_utc(next, tz),
                None => t,
            },
        }
    }

    /// The share of `period` covered by `[from, to)`, between 0 and 1.
    pub fn factor(
        self,
        period: &BillingPeriod,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: Tz,
    ) -> Result<Decimal> {
        let from = from.max(period.start);
        let to = to.min(period.end);
        if to <= from {
            return Ok(Decimal::ZERO);
        }
        if from == period.start && to == period.end {
            return Ok(Decimal::ONE);
        }
        match self {
            ProrationConvention::Seconds => {
                let total = period.seconds();
                if total <= 0 {
                    return Err(Error::InvalidPeriod("empty period".into()));
                }
                let part = (to - from).num_seconds();
                Ok(Decimal::from(part) / Decimal::from(total))
            }
            ProrationConvention::Days | ProrationConvention::DaysExclusiveEnd => {
                let total = period.days();
                if total <= 0 {
                    return Err(Error::InvalidPeriod("empty period".into()));
                }
                // Instants inside a day count that day (service days), so round the end up to a day.
                let first = local_date(from, tz);
                let last_excl = if to == period.end {
                    period.end_date
                } else {
                    let d = local_date(to, tz);
                    if local_midnight_utc(d, tz) == to {
                        d
                    } else {
                        d.succ_opt().unwrap_or(d)
                    }
                };
                let days = (last_excl - first).num_days().clamp(0, total);
                let f = Decimal::from(days) / Decimal::from(total);
                Ok(if self == ProrationConvention::DaysExclusiveEnd {
                    f.round_dp_with_strategy(
                        KILL_BILL_FACTOR_DECIMALS,
                        RoundingStrategy::MidpointAwayFromZero,
                    )
                } else {
                    f
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{round_to_minor, RoundingMode};
    use crate::period::{parse_timezone, BillingTime, Interval, Schedule};
    use crate::Currency;
    use chrono::{Duration, NaiveDate};
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn month(t: &str, tz: Tz) -> BillingPeriod {
        Schedule::new(Interval::Monthly, BillingTime::Calendar, utc(t), tz)
            .unwrap()
            .period_containing(utc(t))
            .unwrap()
    }

    #[test]
    fn days_counts_service_days_inclusively() {
        let jan = month("2026-01-10T00:00:00Z", Tz::UTC);
        // Service Jan 15..=Jan 31: 17 days of 31.
        let f = ProrationConvention::Days
            .factor(&jan, utc("2026-01-15T00:00:00Z"), jan.end, Tz::UTC)
            .unwrap();
        assert_eq!(f, dec!(17) / dec!(31));
        // A start in the middle of a day still bills that day.
        let f = ProrationConvention::Days
            .factor(&jan, utc("2026-01-15T13:00:00Z"), jan.end, Tz::UTC)
            .unwrap();
        assert_eq!(f, dec!(17) / dec!(31));
    }

    #[test]
    fn kill_bill_factor_is_rounded_to_nine_decimals() {
        let feb = month("2026-02-10T00:00:00Z", Tz::UTC);
        let f = ProrationConvention::DaysExclusiveEnd
            .factor(&feb, feb.start, utc("2026-02-23T00:00:00Z"), Tz::UTC)
            .unwrap();
        assert_eq!(f, dec!(0.785714286));
    }

    #[test]
    fn seconds_are_exact() {
        let apr = month("2026-04-10T00:00:00Z", Tz::UTC);
        let f = ProrationConvention::Seconds
            .factor(&apr, utc("2026-04-16T00:00:00Z"), apr.end, Tz::UTC)
            .unwrap();
        assert_eq!(f, dec!(0.5));
        let f = ProrationConvention::Seconds
            .factor(&apr, utc("2026-04-16T00:00:01Z"), apr.end, Tz::UTC)
            .unwrap();
        assert_eq!(
            f,
            Decimal::from(15 * 86_400 - 1) / Decimal::from(30 * 86_400)
        );
    }

    #[test]
    fn cancellation_edges_differ_between_day_conventions() {
        let tz = parse_timezone("Europe/Paris").unwrap();
        let t = utc("2026-02-22T15:00:00Z");
        let lago = ProrationConvention::Days.effective_instant(t, ChangeEdge::Cancel, tz);
        assert_eq!(lago, utc("2026-02-22T23:00:00Z")); // midnight starting Feb 23 in Paris
        let kb = ProrationConvention::DaysExclusiveEnd.effective_instant(t, ChangeEdge::Cancel, tz);
        assert_eq!(kb, utc("2026-02-21T23:00:00Z")); // midnight starting Feb 22 in Paris
        assert_eq!(
            ProrationConvention::Seconds.effective_instant(t, ChangeEdge::Cancel, tz),
            t
        );
    }

    #[test]
    fn dst_month_in_new_york_prorates_by_days_not_hours() {
        let tz = parse_timezone("America/New_York").unwrap();
        let mar = month("2024-03-15T12:00:00Z", tz);
        // From local midnight of Mar 10 (the 23-hour day) to the end: 22 of 31 days.
        let from = local_midnight_utc(chrono::NaiveDate::from_ymd_opt(2024, 3, 10).unwrap(), tz);
        let f = ProrationConvention::Days
            .factor(&mar, from, mar.end, tz)
            .unwrap();
        assert_eq!(f, dec!(22) / dec!(31));
        let s = ProrationConvention::Seconds
            .factor(&mar, from, mar.end, tz)
            .unwrap();
        assert_eq!(
            s,
            Decimal::from(22 * 86_400 - 3_600) / Decimal::from(31 * 86_400 - 3_600)
        );
    }

    #[test]
    fn empty_or_outside_ranges_are_zero_and_full_is_one() {
        let jan = month("2026-01-10T00:00:00Z", Tz::UTC);
        for c in [
            ProrationConvention::Days,
            ProrationConvention::DaysExclusiveEnd,
            ProrationConvention::Seconds,
        ] {
            assert_eq!(
                c.factor(&jan, jan.end, jan.end, Tz::UTC).unwrap(),
                Decimal::ZERO
            );
            assert_eq!(
                c.factor(&jan, jan.start, jan.end, Tz::UTC).unwrap(),
                Decimal::ONE
            );
        }
    }

    proptest! {
        // Cutting a period into parts and rounding each part loses at most one minor unit per cut.
        #[test]
        fn prorated_parts_add_up_to_the_full_fee(
            year in 2020i32..2031,
            month in 1u32..=12,
            tz_i in 0usize..3,
            conv_i in 0usize..3,
            fee_cents in 0i64..10_000_000,
            cuts in prop::collection::vec(0i64..10_000_000, 1..6),
        ) {
            let tz = [Tz::UTC, parse_timezone("America/New_York").unwrap(), parse_timezone("Europe/Paris").unwrap()][tz_i];
            let conv = [ProrationConvention::Days, ProrationConvention::DaysExclusiveEnd, ProrationConvention::Seconds][conv_i];
            let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap();
            let p = Schedule::new(Interval::Monthly, BillingTime::Calendar, local_midnight_utc(first, tz), tz)
                .unwrap()
                .period_containing_date(first)
                .unwrap();
            let mut points: Vec<DateTime<Utc>> = cuts
                .iter()
                .map(|c| match conv {
                    ProrationConvention::Seconds => p.start + Duration::seconds(c % p.seconds()),
                    _ => local_midnight_utc(p.start_date + Duration::days(c % p.days()), tz),
                })
                .collect();
            points.push(p.start);
            points.push(p.end);
            points.sort();
            points.dedup();
            let usd = Currency::parse("USD").unwrap();
            let fee = Decimal::new(fee_cents, 2);
            let sum: Decimal = points
                .windows(2)
                .map(|w| round_to_minor(fee * conv.factor(&p, w[0], w[1], tz).unwrap(), usd, RoundingMode::HalfUp))
                .sum();
            let cuts_made = i64::try_from(points.len() - 2).unwrap();
            prop_assert!((sum - fee).abs() <= Decimal::new(cuts_made, 2), "{} vs {}", sum, fee);
        }
    }
}
