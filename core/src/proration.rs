//! Proration of subscription fees over part of a period.
//!
//! Four conventions, selectable per tenant or plan:
//!
//! * `days` (default, Lago): the factor is the number of service days over the number of days of the
//!   actual period, counting the first and the last service day inclusively. Kept at full precision.
//!   Example: €100/month, service Jan 15–31 of a 31-day January → 17/31 → €54.84.
//! * `days_exclusive_end` (Kill Bill): days from start to an exclusive end date over the period length,
//!   with the factor rounded to 9 decimals half-up before it multiplies the fee.
//!   Example: $12/month kept for 22 of 28 days → 0.785714286 × 12 = 9.428571432 → $9.43.
//! * `seconds` (Stripe): the exact seconds of service over the seconds of the period.
//!   Example: $10 → $20 at exactly half of the period → −$5.00 + $10.00 = +$5.00.
//! * `thirty_day` (Kill Bill's fixed 30-day months, the 30/360 habit): every month counts 30 days, a year
//!   360, a quarter 90, a half-year 180 (weekly periods keep their 7 actual days). A date's position in
//!   the period is `360 × Δyears + 30 × Δmonths + (min(day, 30) − min(start day, 30))` from the period's
//!   first date, clamped to the period's length; the period's end is its full length. So day 31 counts as
//!   day 30 (Jan 30 and Jan 31 together are one day, billed from Jan 30), and February's last day absorbs
//!   the missing days (Feb 28 → Mar 1 is 3 days in 2026, Feb 29 → Mar 1 is 2 in 2024): every month is 30
//!   days whatever its length. The factor is exact (not rounded). Edges as `days_exclusive_end`: a change
//!   on local day X takes effect at the start of X, an immediate cancellation on X ends service at the
//!   start of X. Example: $100/month cancelled on Jan 15 → 14/30 → $46.67; Feb 15 → 14/30 as well.
//!
//! Day conventions work on local dates: a change on any time of local day X takes effect from the start
//! of X. They differ on immediate cancellation: under `days` the cancellation day is the last service day
//! (billed); under `days_exclusive_end` the cancellation date is the exclusive end (not billed).

use chrono::{DateTime, Datelike, NaiveDate, Utc};
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
    /// Every month counts 30 days, a year 360 (Kill Bill's fixed 30-day mode, the 30/360 habit).
    ThirtyDay,
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
            (ProrationConvention::DaysExclusiveEnd | ProrationConvention::ThirtyDay, _)
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
            ProrationConvention::Days
            | ProrationConvention::DaysExclusiveEnd
            | ProrationConvention::ThirtyDay => {
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
                if self == ProrationConvention::ThirtyDay {
                    return Ok(thirty_day_factor(period, first, last_excl));
                }
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

/// Days from `a` to `b` counting every month as 30 days (day 31 counts as day 30).
fn days_30_360(a: NaiveDate, b: NaiveDate) -> i64 {
    let d = |x: NaiveDate| i64::from(x.day().min(30));
    360 * i64::from(b.year() - a.year()) + 30 * (i64::from(b.month()) - i64::from(a.month())) + d(b)
        - d(a)
}

/// The `thirty_day` factor of the local dates `[first, last_excl)` in `period`.
fn thirty_day_factor(period: &BillingPeriod, first: NaiveDate, last_excl: NaiveDate) -> Decimal {
    let months = 12 * i64::from(period.end_date.year() - period.start_date.year())
        + i64::from(period.end_date.month())
        - i64::from(period.start_date.month());
    // Weekly periods (never longer than 7 days) keep their actual days.
    let (length, pos): (i64, Box<dyn Fn(NaiveDate) -> i64>) = if period.days() <= 7 {
        (
            period.days(),
            Box::new(|x| (x - period.start_date).num_days()),
        )
    } else {
        (30 * months, Box::new(|x| days_30_360(period.start_date, x)))
    };
    let at = |x: NaiveDate| {
        if x >= period.end_date {
            length
        } else {
            pos(x).clamp(0, length)
        }
    };
    let days = (at(last_excl) - at(first)).max(0);
    if length <= 0 {
        return Decimal::ZERO;
    }
    Decimal::from(days) / Decimal::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{round_to_minor, RoundingMode};
    use crate::period::{parse_timezone, BillingTime, Interval, Schedule};
    use crate::Currency;
    use chrono::Duration;
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

    // Kill Bill's fixed 30-day proration (the 30/360 convention): every month counts 30 days, day 31 counts
    // as day 30, February's last day absorbs the missing days, a year is 360 days.
    #[test]
    fn thirty_day_counts_every_month_as_30_days() {
        let c = ProrationConvention::ThirtyDay;
        let d = |s: &str| utc(&format!("{s}T00:00:00Z"));
        let f = |p: &BillingPeriod, a: &str, b: Option<&str>| {
            c.factor(p, d(a), b.map_or(p.end, d), Tz::UTC).unwrap()
        };
        // 31-day January: Jan 15 → end is 16/30 (Jan 15..=30, the 31st is day 30); Jan 1 → Jan 15 is 14/30.
        let jan = month("2026-01-10T00:00:00Z", Tz::UTC);
        assert_eq!(f(&jan, "2026-01-15", None), dec!(16) / dec!(30));
        assert_eq!(
            f(&jan, "2026-01-01", Some("2026-01-15")),
            dec!(14) / dec!(30)
        );
        assert_eq!(f(&jan, "2026-01-31", None), dec!(1) / dec!(30));
        assert_eq!(f(&jan, "2026-01-30", Some("2026-01-31")), dec!(0)); // day 31 is day 30
                                                                        // 28-day February: Feb 1 → Feb 15 is 14/30, Feb 15 → end 16/30; Feb 28 alone is 3 days.
        let feb = month("2026-02-10T00:00:00Z", Tz::UTC);
        assert_eq!(
            f(&feb, "2026-02-01", Some("2026-02-15")),
            dec!(14) / dec!(30)
        );
        assert_eq!(f(&feb, "2026-02-15", None), dec!(16) / dec!(30));
        assert_eq!(f(&feb, "2026-02-28", None), dec!(3) / dec!(30));
        // Leap February: Feb 29 alone is 2 days.
        let feb24 = month("2024-02-10T00:00:00Z", Tz::UTC);
        assert_eq!(f(&feb24, "2024-02-29", None), dec!(2) / dec!(30));
        // Yearly: 360 days; from July 1 is half; from March 1 (after a 28-day February) is 300/360.
        let year = Schedule::new(
            Interval::Yearly,
            BillingTime::Calendar,
            d("2026-01-01"),
            Tz::UTC,
        )
        .unwrap()
        .period_containing(d("2026-05-01"))
        .unwrap();
        assert_eq!(f(&year, "2026-07-01", None), dec!(0.5));
        assert_eq!(f(&year, "2026-03-01", None), dec!(300) / dec!(360));
        assert_eq!(f(&year, "2026-12-31", None), dec!(1) / dec!(360));
        // Anniversary month Jan 31 → Feb 28 (2026) is 30 days too: Feb 14 → end is 16/30.
        let anniv = Schedule::new(
            Interval::Monthly,
            BillingTime::Anniversary,
            d("2026-01-31"),
            Tz::UTC,
        )
        .unwrap()
        .period_containing(d("2026-02-10"))
        .unwrap();
        assert_eq!(f(&anniv, "2026-02-14", None), dec!(16) / dec!(30));
        // $100/month: cancelled (exclusive end) on Jan 15 → 14/30 → 46.67, like Feb 15.
        let usd = Currency::parse("USD").unwrap();
        let fee = |x: Decimal| round_to_minor(dec!(100) * x, usd, RoundingMode::HalfUp);
        assert_eq!(fee(f(&jan, "2026-01-01", Some("2026-01-15"))), dec!(46.67));
        assert_eq!(fee(f(&feb, "2026-02-01", Some("2026-02-15"))), dec!(46.67));
        // Edges: begin and cancel both at the start of the local day.
        let t = utc("2026-02-22T15:00:00Z");
        assert_eq!(
            c.effective_instant(t, ChangeEdge::Cancel, Tz::UTC),
            d("2026-02-22")
        );
        assert_eq!(
            c.effective_instant(t, ChangeEdge::Begin, Tz::UTC),
            d("2026-02-22")
        );
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!("thirty_day")
        );
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
            ProrationConvention::ThirtyDay,
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
            conv_i in 0usize..4,
            fee_cents in 0i64..10_000_000,
            cuts in prop::collection::vec(0i64..10_000_000, 1..6),
        ) {
            let tz = [Tz::UTC, parse_timezone("America/New_York").unwrap(), parse_timezone("Europe/Paris").unwrap()][tz_i];
            let conv = [ProrationConvention::Days, ProrationConvention::DaysExclusiveEnd, ProrationConvention::Seconds, ProrationConvention::ThirtyDay][conv_i];
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
