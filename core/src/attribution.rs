//! Usage attribution: which subscription, plan and billing period a usage event at time `t` belongs to.
//!
//! It runs over the one subscription model of the core ([`Subscription`], its [`Change`](crate::subscription::Change)s
//! and the [`State`] they lead to), so rating and the invoicer cannot disagree on it. Rules:
//!
//! * Usage is attributed at the exact instant of the event: a plan change at 15:00 leaves the 10:00 usage of that
//!   day on the old plan (day-based proration conventions concern the subscription fee only).
//! * A subscription takes usage while it is *live*: from its start until it ends, **trial and pause included**
//!   (usage during a pause is still metered, as Lago and Stripe meter it; only the fee stops).
//! * Of several live subscriptions of a customer, the most recently started one takes the event (ties: the one
//!   listed last).
//! * The period is the billing period of the plan in force at `t`, in the customer's timezone.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::error::Result;
use crate::period::{local_date, BillingPeriod, BillingTime, Interval, Schedule};
use crate::proration::ProrationConvention;
use crate::subscription::{segments, State, Subscription};

/// One subscription as attribution sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attributable<'a> {
    /// Its history; plan indices point into `intervals`.
    pub subscription: &'a Subscription,
    /// The billing interval of each plan the history names, or `None` for a plan the caller does not know (a
    /// subscription is passed over while such a plan is in force).
    pub intervals: &'a [Option<Interval>],
    /// Calendar or anniversary periods.
    pub billing_time: BillingTime,
}

/// Where an event belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// Index of the subscription in the slice given to [`attribute`].
    pub subscription: usize,
    /// Index of the plan in force (into that subscription's `intervals`).
    pub plan: usize,
    /// The billing period containing the event.
    pub period: BillingPeriod,
}

/// The state of a subscription at an exact instant. Changes take effect at their own instant; those that wait
/// for a period end (downgrade, cancellation at period end) use `schedule`'s periods.
pub fn state_at(sub: &Subscription, schedule: &Schedule, at: DateTime<Utc>) -> Result<State> {
    let date = local_date(at, schedule.timezone());
    let instant = BillingPeriod {
        start: at,
        end: at + Duration::nanoseconds(1),
        start_date: date,
        end_date: date,
    };
    let segs = segments(sub, schedule, ProrationConvention::Seconds, &instant)?;
    Ok(segs.first().map_or(
        State {
            plan: sub.plan,
            started: false,
            trial: false,
            paused: false,
            ended: false,
        },
        |s| s.state,
    ))
}

/// Checks that a history is consistent (no resume without a pause, no change before the start or after the
/// end, …); a lifecycle event that would make it inconsistent should be refused, not applied.
pub fn check_history(sub: &Subscription, schedule: &Schedule) -> Result<()> {
    state_at(sub, schedule, sub.started_at).map(drop)
}

/// Attributes an event time to the subscription, plan and period in force, or `None` when no subscription is
/// live at `at`. An inconsistent history is an error.
pub fn attribute(
    subs: &[Attributable<'_>],
    tz: Tz,
    at: DateTime<Utc>,
) -> Result<Option<Attribution>> {
    let mut order: Vec<usize> = (0..subs.len())
        .filter(|&i| subs[i].subscription.started_at <= at)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse((subs[i].subscription.started_at, i)));
    for i in order {
        let s = &subs[i];
        let sub = s.subscription;
        let schedule_of = |plan: usize| -> Result<Option<Schedule>> {
            match s.intervals.get(plan).copied().flatten() {
                Some(interval) => {
                    Schedule::new(interval, s.billing_time, sub.started_at, tz).map(Some)
                }
                None => Ok(None),
            }
        };
        let Some(first) = schedule_of(sub.plan)? else {
            continue;
        };
        let mut state = state_at(sub, &first, at)?;
        // Period ends of later changes follow the plan in force, which may bill on another interval.
        let mut schedule = first;
        if state.plan != sub.plan {
            let Some(current) = schedule_of(state.plan)? else {
                continue;
            };
            schedule = current;
            if current.interval() != first.interval() {
                state = state_at(sub, &current, at)?;
                let Some(again) = schedule_of(state.plan)? else {
                    continue;
                };
                schedule = again;
            }
        }
        if !state.live() {
            continue;
        }
        return Ok(Some(Attribution {
            subscription: i,
            plan: state.plan,
            period: schedule.period_containing(at)?,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{Change, ChangeKind};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sub(start: &str, changes: &[(&str, ChangeKind)]) -> Subscription {
        Subscription {
            started_at: utc(start),
            trial_ends_at: None,
            plan: 0,
            changes: changes
                .iter()
                .map(|(at, kind)| Change {
                    at: utc(at),
                    kind: *kind,
                })
                .collect(),
        }
    }

    const MONTHLY: &[Option<Interval>] = &[Some(Interval::Monthly), Some(Interval::Monthly)];

    fn one(s: &Subscription, intervals: &[Option<Interval>], at: &str) -> Option<Attribution> {
        attribute(
            &[Attributable {
                subscription: s,
                intervals,
                billing_time: BillingTime::Calendar,
            }],
            Tz::UTC,
            utc(at),
        )
        .unwrap()
    }

    #[test]
    fn usage_during_a_pause_and_a_trial_is_metered() {
        let mut s = sub(
            "2026-01-01T00:00:00Z",
            &[
                ("2026-01-10T00:00:00Z", ChangeKind::Pause),
                ("2026-01-20T00:00:00Z", ChangeKind::Resume),
            ],
        );
        s.trial_ends_at = Some(utc("2026-01-05T00:00:00Z"));
        for at in [
            "2026-01-02T00:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-01-25T00:00:00Z",
        ] {
            let a = one(&s, MONTHLY, at).expect(at);
            assert_eq!(a.period.start, utc("2026-01-01T00:00:00Z"));
        }
        assert_eq!(one(&s, MONTHLY, "2025-12-31T23:59:59Z"), None);
    }

    #[test]
    fn plan_changes_take_effect_at_their_instant() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-01-15T15:00:00Z", ChangeKind::Upgrade { plan: 1 })],
        );
        assert_eq!(one(&s, MONTHLY, "2026-01-15T10:00:00Z").unwrap().plan, 0);
        assert_eq!(one(&s, MONTHLY, "2026-01-15T15:00:00Z").unwrap().plan, 1);
    }

    #[test]
    fn cancellation_ends_usage_now_or_at_period_end() {
        let now = sub(
            "2026-01-01T00:00:00Z",
            &[(
                "2026-01-15T12:00:00Z",
                ChangeKind::Cancel { immediate: true },
            )],
        );
        assert!(one(&now, MONTHLY, "2026-01-15T11:59:59Z").is_some());
        assert!(one(&now, MONTHLY, "2026-01-15T12:00:00Z").is_none());
        let later = sub(
            "2026-01-01T00:00:00Z",
            &[(
                "2026-01-15T12:00:00Z",
                ChangeKind::Cancel { immediate: false },
            )],
        );
        assert!(one(&later, MONTHLY, "2026-01-31T23:59:59Z").is_some());
        assert!(one(&later, MONTHLY, "2026-02-01T00:00:00Z").is_none());
    }

    #[test]
    fn the_latest_started_live_subscription_wins_and_unknown_plans_are_passed_over() {
        let a = sub("2026-01-01T00:00:00Z", &[]);
        let b = sub(
            "2026-01-10T00:00:00Z",
            &[(
                "2026-01-20T00:00:00Z",
                ChangeKind::Cancel { immediate: true },
            )],
        );
        let subs = [
            Attributable {
                subscription: &a,
                intervals: MONTHLY,
                billing_time: BillingTime::Calendar,
            },
            Attributable {
                subscription: &b,
                intervals: MONTHLY,
                billing_time: BillingTime::Anniversary,
            },
        ];
        let at = |t| attribute(&subs, Tz::UTC, utc(t)).unwrap().unwrap();
        assert_eq!(at("2026-01-05T00:00:00Z").subscription, 0);
        let b_time = at("2026-01-15T00:00:00Z");
        assert_eq!(b_time.subscription, 1);
        assert_eq!(b_time.period.start, utc("2026-01-10T00:00:00Z"));
        assert_eq!(at("2026-01-25T00:00:00Z").subscription, 0);
        let unknown = [None, None];
        assert_eq!(one(&a, &unknown, "2026-01-05T00:00:00Z"), None);
    }

    #[test]
    fn the_period_follows_the_plan_in_force() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-02-01T00:00:00Z", ChangeKind::Upgrade { plan: 1 })],
        );
        let intervals = [Some(Interval::Monthly), Some(Interval::Yearly)];
        let jan = one(&s, &intervals, "2026-01-20T00:00:00Z").unwrap();
        assert_eq!(jan.period.end, utc("2026-02-01T00:00:00Z"));
        let later = one(&s, &intervals, "2026-03-20T00:00:00Z").unwrap();
        assert_eq!(later.plan, 1);
        assert_eq!(later.period.end, utc("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn inconsistent_histories_are_errors() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-01-10T00:00:00Z", ChangeKind::Resume)],
        );
        let schedule = Schedule::new(
            Interval::Monthly,
            BillingTime::Calendar,
            s.started_at,
            Tz::UTC,
        )
        .unwrap();
        assert!(check_history(&s, &schedule).is_err());
        assert!(attribute(
            &[Attributable {
                subscription: &s,
                intervals: MONTHLY,
                billing_time: BillingTime::Calendar
            }],
            Tz::UTC,
            utc("2026-01-20T00:00:00Z")
        )
        .is_err());
    }
}
