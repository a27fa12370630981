//! Billing periods: intervals, calendar or anniversary anchors, in the customer's timezone.
//!
//! A period is a half-open range of local dates `[start_date, end_date)`. Its instants are the local
//! midnights of those dates converted to UTC, so a period in `Europe/Paris` that spans the switch to
//! summer time is one hour shorter in seconds but has the same number of days.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How often a plan bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Monday to Sunday (calendar) or seven days from the anchor (anniversary).
    Weekly,
    /// One month.
    Monthly,
    /// Three months; calendar quarters start in January, April, July and October.
    Quarterly,
    /// Six months; calendar halves start in January and July.
    Semiannual,
    /// Twelve months; calendar years start on January 1.
    Yearly,
}

impl Interval {
    /// Length in months, or `None` for weekly.
    fn months(self) -> Option<i32> {
        match self {
            Interval::Weekly => None,
            Interval::Monthly => Some(1),
            Interval::Quarterly => Some(3),
            Interval::Semiannual => Some(6),
            Interval::Yearly => Some(12),
        }
    }
}

/// Whether periods follow the calendar or the subscription's start date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingTime {
    /// Periods start on calendar boundaries (1st of the month, Monday, Jan 1...).
    #[default]
    Calendar,
    /// Periods start on the subscription's start day (clamped to short months).
    Anniversary,
}

/// Where a subscription's billing periods start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingAnchor {
    /// Calendar boundaries (1st of the month, Monday, Jan 1...).
    Calendar,
    /// The subscription's start date (clamped to short months).
    Anniversary,
    /// A chosen day of the month, 1–31, clamped to short months (Kill Bill's BCD, Stripe's
    /// `billing_cycle_anchor`): periods start on that day from the first such date on or after the start;
    /// the stretch from the start to it is the (prorated) end of the period before.
    DayOfMonth(u32),
}

impl From<BillingTime> for BillingAnchor {
    fn from(t: BillingTime) -> Self {
        match t {
            BillingTime::Calendar => BillingAnchor::Calendar,
            BillingTime::Anniversary => BillingAnchor::Anniversary,
        }
    }
}

/// One billing period, start inclusive and end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BillingPeriod {
    /// First instant (local midnight of `start_date`, in UTC).
    pub start: DateTime<Utc>,
    /// First instant after the period (local midnight of `end_date`, in UTC).
    pub end: DateTime<Utc>,
    /// First local date of the period.
    pub start_date: NaiveDate,
    /// First local date after the period.
    pub end_date: NaiveDate,
}

impl BillingPeriod {
    /// Number of local days in the period (28–31 for a month, 7 for a week).
    pub fn days(&self) -> i64 {
        (self.end_date - self.start_date).num_days()
    }

    /// Number of seconds in the period (DST days are 23 or 25 hours long).
    pub fn seconds(&self) -> i64 {
        (self.end - self.start).num_seconds()
    }

    /// Whether an instant falls inside the period.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// Parses an IANA timezone name such as `America/New_York`.
pub fn parse_timezone(name: &str) -> Result<Tz> {
    name.parse::<Tz>()
        .map_err(|_| Error::UnknownTimezone(name.to_string()))
}

/// The local calendar date of an instant in a timezone.
pub fn local_date(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// The UTC instant of local midnight starting `date` in `tz`.
///
/// If midnight is ambiguous (clocks go back at midnight) the earlier instant is used; if it does not
/// exist (clocks jump forward at midnight, as in some South American zones) the first valid local time
/// of that day is used, so the day still starts exactly once.
pub fn local_midnight_utc(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut time = NaiveTime::MIN;
    // A DST gap is at most a few hours; step through the day in quarter hours until a time exists.
    for _ in 0..96 {
        match tz.from_local_datetime(&date.and_time(time)) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(early, _) => return early.with_timezone(&Utc),
            LocalResult::None => time += Duration::minutes(15),
        }
    }
    // Unreachable for real zones; fall back to the UTC reading of the date.
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// Adds months to a date, always clamping from the original anchor's day (Jan 31 + 1 month = Feb 28/29,
/// Jan 31 + 2 months = Mar 31), never cumulatively.
pub fn add_months_clamped(anchor: NaiveDate, months: i32) -> Result<NaiveDate> {
    let total = anchor.year() * 12 + anchor.month0() as i32 + months;
    let year = total.div_euclid(12);
    let month0 = total.rem_euclid(12) as u32;
    let last = last_day_of_month(year, month0 + 1)?;
    NaiveDate::from_ymd_opt(year, month0 + 1, anchor.day().min(last)).ok_or_else(|| {
        Error::InvalidPeriod(format!("date out of range: {anchor} + {months} months"))
    })
}

fn last_day_of_month(year: i32, month: u32) -> Result<u32> {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .ok_or_else(|| Error::InvalidPeriod(format!("year out of range: {year}")))
}

/// The rule that cuts time into periods for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: Interval,
    anchor: NaiveDate,
    /// Day of the month periods start on (month-based intervals), before clamping to short months.
    anchor_day: u32,
    tz: Tz,
}

impl Schedule {
    /// Builds the schedule; `subscription_start` only matters for anniversary billing.
    pub fn new(
        interval: Interval,
        billing_time: BillingTime,
        subscription_start: DateTime<Utc>,
        tz: Tz,
    ) -> Result<Self> {
        let anchor = match billing_time {
            BillingTime::Anniversary => local_date(subscription_start, tz),
            // 2001-01-01 is both a Monday (weekly) and a January 1 (month-based intervals).
            BillingTime::Calendar => NaiveDate::from_ymd_opt(2001, 1, 1)
                .ok_or_else(|| Error::InvalidPeriod("calendar anchor".into()))?,
        };
        Ok(Schedule {
            interval,
            anchor,
            anchor_day: anchor.day(),
            tz,
        })
    }

    /// Builds the schedule from any [`BillingAnchor`]. With [`BillingAnchor::DayOfMonth`], the first
    /// period boundary is the first local date on or after `subscription_start` whose day is the anchor
    /// day (the month's last day when the month is shorter); boundaries then follow every `interval`
    /// from it, always on the anchor day clamped to the month (31 → Feb 28 → Mar 31). Weekly plans have no
    /// day of the month: a day anchor on them is an error.
    pub fn anchored(
        interval: Interval,
        anchor: BillingAnchor,
        subscription_start: DateTime<Utc>,
        tz: Tz,
    ) -> Result<Self> {
        let day = match anchor {
            BillingAnchor::Calendar => {
                return Schedule::new(interval, BillingTime::Calendar, subscription_start, tz)
            }
            BillingAnchor::Anniversary => {
                return Schedule::new(interval, BillingTime::Anniversary, subscription_start, tz)
            }
            BillingAnchor::DayOfMonth(d) => d,
        };
        if !(1..=31).contains(&day) {
            return Err(Error::InvalidPeriod(format!(
                "billing anchor day {day} is not between 1 and 31"
            )));
        }
        if interval.months().is_none() {
            return Err(Error::InvalidPeriod(
                "a billing anchor day needs a month-based interval, not weekly".into(),
            ));
        }
        let start = local_date(subscription_start, tz);
        let in_month = |y: i32, m: u32| -> Result<NaiveDate> {
            let d = day.min(last_day_of_month(y, m)?);
            NaiveDate::from_ymd_opt(y, m, d)
                .ok_or_else(|| Error::InvalidPeriod(format!("date out of range: {y}-{m}-{d}")))
        };
        let mut first = in_month(start.year(), start.month())?;
        if first < start {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            first = in_month(y, m)?;
        }
        Ok(Schedule {
            interval,
            anchor: first,
            anchor_day: day,
            tz,
        })
    }

    /// The day of the month periods start on (before clamping), for month-based intervals.
    pub fn anchor_day(&self) -> u32 {
        self.anchor_day
    }

    /// The interval.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// The timezone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Start date of the k-th period counted from the anchor (k may be negative).
    fn boundary(&self, k: i64) -> Result<NaiveDate> {
        match self.interval.months() {
            None => self
                .anchor
                .checked_add_signed(Duration::days(7 * k))
                .ok_or_else(|| Error::InvalidPeriod("date out of range".into())),
            Some(step) => {
                let months = i32::try_from(k * i64::from(step))
                    .map_err(|_| Error::InvalidPeriod("date out of range".into()))?;
                let total = self.anchor.year() * 12 + self.anchor.month0() as i32 + months;
                let (year, month) = (total.div_euclid(12), total.rem_euclid(12) as u32 + 1);
                let day = self.anchor_day.min(last_day_of_month(year, month)?);
                NaiveDate::from_ymd_opt(year, month, day)
                    .ok_or_else(|| Error::InvalidPeriod("date out of range".into()))
            }
        }
    }

    /// The period that contains a local date.
    pub fn period_containing_date(&self, date: NaiveDate) -> Result<BillingPeriod> {
        let mut k = match self.interval.months() {
            None => (date - self.anchor).num_days().div_euclid(7),
            Some(step) => {
                let diff = (date.year() - self.anchor.year()) * 12 + date.month0() as i32
                    - self.anchor.month0() as i32;
                i64::from(diff.div_euclid(step))
            }
        };
        // The month estimate can be one off when the anchor day is late in the month.
        while self.boundary(k)? > date {
            k -= 1;
        }
        while self.boundary(k + 1)? <= date {
            k += 1;
        }
        let start_date = self.boundary(k)?;
        let end_date = self.boundary(k + 1)?;
        Ok(BillingPeriod {
            start: local_midnight_utc(start_date, self.tz),
            end: local_midnight_utc(end_date, self.tz),
            start_date,
            end_date,
        })
    }

    /// The period that contains an instant.
    pub fn period_containing(&self, t: DateTime<Utc>) -> Result<BillingPeriod> {
        self.period_containing_date(local_date(t, self.tz))
    }

    /// The period right after `p`.
    pub fn next(&self, p: &BillingPeriod) -> Result<BillingPeriod> {
        self.period_containing_date(p.end_date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn jan_31_anchor_clamps_from_the_original_day() {
        let a = d(2024, 1, 31);
        assert_eq!(add_months_clamped(a, 1).unwrap(), d(2024, 2, 29)); // leap year
        assert_eq!(add_months_clamped(a, 2).unwrap(), d(2024, 3, 31)); // back to 31, not 29
        assert_eq!(
            add_months_clamped(d(2025, 1, 31), 1).unwrap(),
            d(2025, 2, 28)
        );
        assert_eq!(add_months_clamped(a, 3).unwrap(), d(2024, 4, 30));
        assert_eq!(add_months_clamped(a, -2).unwrap(), d(2023, 11, 30));
        assert_eq!(
            add_months_clamped(d(2024, 2, 29), 12).unwrap(),
            d(2025, 2, 28)
        );
    }

    #[test]
    fn anniversary_monthly_periods_from_jan_31() {
        let s = Schedule::new(
            Interval::Monthly,
            BillingTime::Anniversary,
            utc("2024-01-31T10:00:00Z"),
            Tz::UTC,
        )
        .unwrap();
        let p1 = s.period_containing(utc("2024-02-10T00:00:00Z")).unwrap();
        assert_eq!(
            (p1.start_date, p1.end_date),
            (d(2024, 1, 31), d(2024, 2, 29))
        );
        let p2 = s.next(&p1).unwrap();
        assert_eq!(
            (p2.start_date, p2.end_date),
            (d(2024, 2, 29), d(2024, 3, 31))
        );
        assert_eq!(p2.days(), 31);
        let p3 = s.next(&p2).unwrap();
        assert_eq!(
            (p3.start_date, p3.end_date),
            (d(2024, 3, 31), d(2024, 4, 30))
        );
    }

    // Kill Bill's billing cycle day (BCD) and Stripe's `billing_cycle_anchor`: a subscription can start on
    // any day and bill on a chosen day of the month, clamped to short months; the stretch before the first
    // anchor date is a (prorated) part of the period that ends there.
    #[test]
    fn anchor_day_separate_from_the_start() {
        let s = Schedule::anchored(
            Interval::Monthly,
            BillingAnchor::DayOfMonth(15),
            utc("2026-01-10T12:00:00Z"),
            Tz::UTC,
        )
        .unwrap();
        let p = s.period_containing(utc("2026-01-10T12:00:00Z")).unwrap();
        assert_eq!(
            (p.start_date, p.end_date),
            (d(2025, 12, 15), d(2026, 1, 15))
        );
        let n = s.next(&p).unwrap();
        assert_eq!((n.start_date, n.end_date), (d(2026, 1, 15), d(2026, 2, 15)));
        // Day 31, starting Feb 10: first anchor Feb 28, then back to Mar 31, Apr 30.
        let s = Schedule::anchored(
            Interval::Monthly,
            BillingAnchor::DayOfMonth(31),
            utc("2026-02-10T00:00:00Z"),
            Tz::UTC,
        )
        .unwrap();
        let p = s.period_containing_date(d(2026, 3, 5)).unwrap();
        assert_eq!((p.start_date, p.end_date), (d(2026, 2, 28), d(2026, 3, 31)));
        let n = s.next(&p).unwrap();
        assert_eq!((n.start_date, n.end_date), (d(2026, 3, 31), d(2026, 4, 30)));
        let first = s.period_containing_date(d(2026, 2, 10)).unwrap();
        assert_eq!(first.start_date, d(2026, 1, 31));
        // Starting on the anchor day itself: the first period starts at the start.
        let s = Schedule::anchored(
            Interval::Yearly,
            BillingAnchor::DayOfMonth(1),
            utc("2026-05-01T00:00:00Z"),
            Tz::UTC,
        )
        .unwrap();
        let p = s.period_containing_date(d(2026, 5, 1)).unwrap();
        assert_eq!((p.start_date, p.end_date), (d(2026, 5, 1), d(2027, 5, 1)));
        for bad in [0, 32] {
            assert!(Schedule::anchored(
                Interval::Monthly,
                BillingAnchor::DayOfMonth(bad),
                utc("2026-05-01T00:00:00Z"),
                Tz::UTC
            )
            .is_err());
        }
        assert!(Schedule::anchored(
            Interval::Weekly,
            BillingAnchor::DayOfMonth(3),
            utc("2026-05-01T00:00:00Z"),
            Tz::UTC
        )
        .is_err());
    }

    #[test]
    fn calendar_intervals() {
        let tz = Tz::UTC;
        let t = utc("2024-05-15T12:00:00Z");
        let per = |i| {
            Schedule::new(i, BillingTime::Calendar, t, tz)
                .unwrap()
                .period_containing(t)
                .unwrap()
        };
        let m = per(Interval::Monthly);
        assert_eq!((m.start_date, m.end_date), (d(2024, 5, 1), d(2024, 6, 1)));
        let q = per(Interval::Quarterly);
        assert_eq!((q.start_date, q.end_date), (d(2024, 4, 1), d(2024, 7, 1)));
        let h = per(Interval::Semiannual);
        assert_eq!((h.start_date, h.end_date), (d(2024, 1, 1), d(2024, 7, 1)));
        let y = per(Interval::Yearly);
        assert_eq!((y.start_date, y.end_date), (d(2024, 1, 1), d(2025, 1, 1)));
        assert_eq!(y.days(), 366);
        let w = per(Interval::Weekly);
        // 2024-05-15 is a Wednesday; the calendar week runs Monday 13 to Sunday 19.
        assert_eq!((w.start_date, w.end_date), (d(2024, 5, 13), d(2024, 5, 20)));
        assert_eq!(w.start_date.weekday(), chrono::Weekday::Mon);
    }

    #[test]
    fn anniversary_weekly_and_yearly_leap_day() {
        let t = utc("2024-02-29T08:00:00Z");
        let y = Schedule::new(Interval::Yearly, BillingTime::Anniversary, t, Tz::UTC).unwrap();
        let p = y.period_containing(t).unwrap();
        assert_eq!((p.start_date, p.end_date), (d(2024, 2, 29), d(2025, 2, 28)));
        let n = y.next(&p).unwrap();
        assert_eq!((n.start_date, n.end_date), (d(2025, 2, 28), d(2026, 2, 28)));
        let w = Schedule::new(Interval::Weekly, BillingTime::Anniversary, t, Tz::UTC).unwrap();
        let p = w.period_containing(utc("2024-03-10T00:00:00Z")).unwrap();
        assert_eq!((p.start_date, p.end_date), (d(2024, 3, 7), d(2024, 3, 14)));
    }

    #[test]
    fn boundaries_are_local_midnight_in_new_york_across_dst() {
        let tz = parse_timezone("America/New_York").unwrap();
        let s = Schedule::new(
            Interval::Monthly,
            BillingTime::Calendar,
            utc("2024-01-01T00:00:00Z"),
            tz,
        )
        .unwrap();
        // 2024-03-01 02:00 UTC is still Feb 29 in New York.
        let feb = s.period_containing(utc("2024-03-01T02:00:00Z")).unwrap();
        assert_eq!(feb.start_date, d(2024, 2, 1));
        assert_eq!(feb.end, utc("2024-03-01T05:00:00Z")); // EST, UTC-5
        let mar = s.next(&feb).unwrap();
        assert_eq!(mar.end, utc("2024-04-01T04:00:00Z")); // EDT, UTC-4
        assert_eq!(mar.days(), 31);
        assert_eq!(mar.seconds(), 31 * 86_400 - 3_600); // the spring-forward day has 23 hours
    }

    #[test]
    fn paris_dst_days_keep_whole_day_counts() {
        let tz = parse_timezone("Europe/Paris").unwrap();
        let s = Schedule::new(
            Interval::Weekly,
            BillingTime::Calendar,
            utc("2024-10-01T00:00:00Z"),
            tz,
        )
        .unwrap();
        // Clocks go back on Sunday 2024-10-27 in Paris.
        let w = s.period_containing(utc("2024-10-26T12:00:00Z")).unwrap();
        assert_eq!(
            (w.start_date, w.end_date),
            (d(2024, 10, 21), d(2024, 10, 28))
        );
        assert_eq!(w.start, utc("2024-10-20T22:00:00Z"));
        assert_eq!(w.end, utc("2024-10-27T23:00:00Z"));
        assert_eq!(w.seconds(), 7 * 86_400 + 3_600);
    }

    #[test]
    fn midnight_gap_moves_to_first_valid_time() {
        // America/Santiago sprang forward at midnight on 2022-09-11 (00:00 -> 01:00).
        let tz = parse_timezone("America/Santiago").unwrap();
        let t = local_midnight_utc(d(2022, 9, 11), tz);
        assert_eq!(local_date(t, tz), d(2022, 9, 11));
        assert_eq!(t, utc("2022-09-11T04:00:00Z"));
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
