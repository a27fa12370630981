//! Usage attribution: which subscription, plan and billing period a usage event at time `t` belongs to.
//!
//! It runs over the one subscription model of the core ([`Subscription`], its [`Change`](crate::subscription::Change)s
//! and the [`State`] they lead to), so rating and the invoicer cannot disagree on it. Rules:
//!
//! * Usage is attributed at the exact instant of the event: a plan change at 15:00 leaves the 10:00 usage of that
//!   day on the old plan (day-based proration conventions concern the subscription fee only).
//! * A subscription takes usage while it is *live*: from its start until it ends, **trial and pause included**
//!   (usage during a pause is still metered, as Lago and Stripe meter it; only the fee stops). A subscription
//!   suspended by dunning takes no usage (Kill Bill's blocked billing): its usage is refused.
//! * Of several live subscriptions of a customer, the most recently started one takes the event (ties: the one
//!   listed last).
//! * The period is the billing period of the plan in force at `t`, in the customer's timezone.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::error::Result;
use crate::invoicing::{phase_at, phases, Phase, PlanTerms};
use crate::period::{local_date, BillingPeriod};
use crate::proration::ProrationConvention;
use crate::subscription::{segments_with, State, Subscription};

/// One subscription as attribution sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attributable<'a> {
    /// Its history; plan indices point into `plans`.
    pub subscription: &'a Subscription,
    /// The terms of each plan the history names, or `None` for a plan the caller does not know: a subscription
    /// with an unknown plan is passed over.
    pub plans: &'a [Option<PlanTerms>],
}

/// Where an event belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// Index of the subscription in the slice given to [`attribute`].
    pub subscription: usize,
    /// Index of the plan in force.
    pub plan: usize,
    /// The billing period containing the event.
    pub period: BillingPeriod,
}

/// The phases (schedules) of a subscription at exact instants: the same phases the invoice bills, so usage and
/// fees fall in the same periods, also after a change of interval or anchor.
fn exact_phases(sub: &Subscription, plans: &[PlanTerms], tz: Tz) -> Result<Vec<Phase>> {
    phases(sub, plans, ProrationConvention::Seconds, tz)
}

/// The state of a subscription at an exact instant. Changes take effect at their own instant; those that wait
/// for a period end (downgrade, cancellation at period end) use the periods of the phase they fall in.
pub fn state_at(sub: &Subscription, phases: &[Phase], tz: Tz, at: DateTime<Utc>) -> Result<State> {
    let date = local_date(at, tz);
    let instant = BillingPeriod {
        start: at,
        end: at + Duration::nanoseconds(1),
        start_date: date,
        end_date: date,
    };
    let period_end_at = |t| -> Result<DateTime<Utc>> {
        Ok(phase_at(phases, t)?.schedule.period_containing(t)?.end)
    };
    let segs = segments_with(
        sub,
        &period_end_at,
        ProrationConvention::Seconds,
        tz,
        &instant,
    )?;
    Ok(segs.first().map_or(
        State {
            plan: sub.plan,
            started: false,
            trial: false,
            paused: false,
            suspended: false,
            ended: false,
        },
        |s| s.state,
    ))
}

/// Checks that a history is consistent (no resume without a pause, no change before the start or after the
/// end, plan changes in order, …): a lifecycle event that would make it inconsistent should be refused.
pub fn check_history(sub: &Subscription, plans: &[PlanTerms], tz: Tz) -> Result<()> {
    let phases = exact_phases(sub, plans, tz)?;
    state_at(sub, &phases, tz, sub.started_at).map(drop)
}

/// Where a subscription stands at `at`: its state and the period of its phase, or `None` when it is not live,
/// names an unknown plan or has an inconsistent history (a caller that refuses inconsistent changes with
/// [`check_history`] never has one).
fn locate(s: &Attributable<'_>, tz: Tz, at: DateTime<Utc>) -> Option<(State, BillingPeriod)> {
    let plans: Vec<PlanTerms> = s.plans.iter().copied().collect::<Option<_>>()?;
    let phases = exact_phases(s.subscription, &plans, tz).ok()?;
    let state = state_at(s.subscription, &phases, tz, at).ok()?;
    if !state.live() {
        return None;
    }
    let period = phase_at(&phases, at)
        .ok()?
        .schedule
        .period_containing(at)
        .ok()?;
    Some((state, period))
}

/// Attributes an event time to the subscription, plan and period in force, or `None` when no subscription is
/// live at `at`. Of several live subscriptions the most recently started wins; on a tie, the one listed first.
pub fn attribute(subs: &[Attributable<'_>], tz: Tz, at: DateTime<Utc>) -> Option<Attribution> {
    let mut order: Vec<usize> = (0..subs.len())
        .filter(|&i| subs[i].subscription.started_at <= at)
        .collect();
    // Stable: among equal start times the first listed stays first.
    order.sort_by_key(|&i| std::cmp::Reverse(subs[i].subscription.started_at));
    order.into_iter().find_map(|i| {
        let (state, period) = locate(&subs[i], tz, at)?;
        Some(Attribution {
            subscription: i,
            plan: state.plan,
            period,
        })
    })
}

/// A stretch of time `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    /// First instant in it.
    pub from: DateTime<Utc>,
    /// First instant after it.
    pub until: DateTime<Utc>,
}

impl Stretch {
    /// Whether `t` falls in it.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.until
    }
}

/// [`attribute`], and the stretch around `at` in which every instant is attributed the same way by the same
/// histories: a caller rating many events of a customer may reuse the attribution for any event time in it, as
/// long as the histories and plans are unchanged.
///
/// The stretch lies inside the period found, and no subscription's start, trial end, change, phase boundary, or
/// the end of the period containing any of those (where a change that waits for a period end takes effect) falls
/// strictly inside it: between such instants neither the live subscriptions, their states, their phases nor the
/// period change.
pub fn attribute_with_stretch(
    subs: &[Attributable<'_>],
    tz: Tz,
    at: DateTime<Utc>,
) -> Option<(Attribution, Stretch)> {
    let found = attribute(subs, tz, at)?;
    let mut stretch = Stretch {
        from: found.period.start,
        until: found.period.end,
    };
    let mut narrow = |t: DateTime<Utc>| {
        if t <= at {
            stretch.from = stretch.from.max(t);
        } else {
            stretch.until = stretch.until.min(t);
        }
    };
    for s in subs {
        let h = s.subscription;
        let mut instants: Vec<DateTime<Utc>> = vec![h.started_at];
        instants.extend(h.trial_ends_at);
        instants.extend(h.changes.iter().map(|c| c.at));
        // A subscription whose phases cannot be cut (an unknown plan, an inconsistent history) is passed over
        // whatever the time, so only its own instants above can matter.
        let phases = s
            .plans
            .iter()
            .copied()
            .collect::<Option<Vec<PlanTerms>>>()
            .and_then(|plans| exact_phases(h, &plans, tz).ok())
            .unwrap_or_default();
        for p in &phases {
            instants.push(p.from);
            instants.extend(p.to);
        }
        for t in instants {
            narrow(t);
            if let Some(end) = phase_at(&phases, t)
                .ok()
                .and_then(|p| p.schedule.period_containing(t).ok())
                .map(|p| p.end)
            {
                narrow(end);
            }
        }
    }
    Some((found, stretch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{BillingAnchor, Interval};
    use crate::subscription::{Change, ChangeKind};
    use proptest::prelude::*;
    use rust_decimal::Decimal;

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

    fn terms(interval: Interval, anchor: BillingAnchor) -> Option<PlanTerms> {
        Some(PlanTerms {
            fee: Decimal::TEN,
            interval,
            pay_in_advance: false,
            anchor,
        })
    }

    fn monthly() -> Vec<Option<PlanTerms>> {
        vec![terms(Interval::Monthly, BillingAnchor::Calendar); 2]
    }

    fn one(s: &Subscription, plans: &[Option<PlanTerms>], at: &str) -> Option<Attribution> {
        attribute(
            &[Attributable {
                subscription: s,
                plans,
            }],
            Tz::UTC,
            utc(at),
        )
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
            let a = one(&s, &monthly(), at).expect(at);
            assert_eq!(a.period.start, utc("2026-01-01T00:00:00Z"));
        }
        assert_eq!(one(&s, &monthly(), "2025-12-31T23:59:59Z"), None);
    }

    #[test]
    fn plan_changes_take_effect_at_their_instant() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-01-15T15:00:00Z", ChangeKind::Upgrade { plan: 1 })],
        );
        assert_eq!(one(&s, &monthly(), "2026-01-15T10:00:00Z").unwrap().plan, 0);
        assert_eq!(one(&s, &monthly(), "2026-01-15T15:00:00Z").unwrap().plan, 1);
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
        assert!(one(&now, &monthly(), "2026-01-15T11:59:59Z").is_some());
        assert!(one(&now, &monthly(), "2026-01-15T12:00:00Z").is_none());
        let later = sub(
            "2026-01-01T00:00:00Z",
            &[(
                "2026-01-15T12:00:00Z",
                ChangeKind::Cancel { immediate: false },
            )],
        );
        assert!(one(&later, &monthly(), "2026-01-31T23:59:59Z").is_some());
        assert!(one(&later, &monthly(), "2026-02-01T00:00:00Z").is_none());
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
        let anniversary = vec![terms(Interval::Monthly, BillingAnchor::Anniversary)];
        let a_plans = monthly();
        let subs = [
            Attributable {
                subscription: &a,
                plans: &a_plans,
            },
            Attributable {
                subscription: &b,
                plans: &anniversary,
            },
        ];
        let at = |t| attribute(&subs, Tz::UTC, utc(t)).unwrap();
        assert_eq!(at("2026-01-05T00:00:00Z").subscription, 0);
        let b_time = at("2026-01-15T00:00:00Z");
        assert_eq!(b_time.subscription, 1);
        assert_eq!(b_time.period.start, utc("2026-01-10T00:00:00Z"));
        assert_eq!(at("2026-01-25T00:00:00Z").subscription, 0);
        assert_eq!(one(&a, &[None], "2026-01-05T00:00:00Z"), None);
        // Two subscriptions started at the same instant: the first listed takes the usage.
        let twin = [
            subs[0],
            Attributable {
                subscription: &a,
                plans: &a_plans,
            },
        ];
        assert_eq!(
            attribute(&twin, Tz::UTC, utc("2026-01-05T00:00:00Z"))
                .unwrap()
                .subscription,
            0
        );
    }

    #[test]
    fn the_period_follows_the_phase_the_invoice_bills() {
        // Monthly (calendar) until Feb 15, then yearly: the yearly periods start at the change, as on the invoice.
        let s = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-02-15T00:00:00Z", ChangeKind::Upgrade { plan: 1 })],
        );
        let plans = [
            terms(Interval::Monthly, BillingAnchor::Calendar),
            terms(Interval::Yearly, BillingAnchor::Calendar),
        ];
        let jan = one(&s, &plans, "2026-01-20T00:00:00Z").unwrap();
        assert_eq!(jan.period.end, utc("2026-02-01T00:00:00Z"));
        let later = one(&s, &plans, "2026-03-20T00:00:00Z").unwrap();
        assert_eq!(later.plan, 1);
        assert_eq!(later.period.start, utc("2026-02-15T00:00:00Z"));
        assert_eq!(later.period.end, utc("2027-02-15T00:00:00Z"));
    }

    #[test]
    fn inconsistent_histories_are_refused_and_never_block_another_subscription() {
        let bad = sub(
            "2026-01-01T00:00:00Z",
            &[("2026-01-10T00:00:00Z", ChangeKind::Resume)],
        );
        let plans: Vec<PlanTerms> = monthly().into_iter().flatten().collect();
        assert!(check_history(&bad, &plans, Tz::UTC).is_err());
        let good = sub("2025-12-01T00:00:00Z", &[]);
        let (m1, m2) = (monthly(), monthly());
        let found = attribute(
            &[
                Attributable {
                    subscription: &bad,
                    plans: &m1,
                },
                Attributable {
                    subscription: &good,
                    plans: &m2,
                },
            ],
            Tz::UTC,
            utc("2026-01-20T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(found.subscription, 1);
    }

    fn history_strategy() -> impl Strategy<Value = (Subscription, Vec<Option<PlanTerms>>)> {
        let day = 86_400i64;
        let base = utc("2026-01-01T00:00:00Z").timestamp();
        let kinds = prop_oneof![
            (0usize..3).prop_map(|plan| ChangeKind::Upgrade { plan }),
            (0usize..3).prop_map(|plan| ChangeKind::Downgrade { plan }),
            any::<bool>().prop_map(|immediate| ChangeKind::Cancel { immediate }),
            Just(ChangeKind::Pause),
            Just(ChangeKind::Resume),
            Just(ChangeKind::Suspend),
            Just(ChangeKind::Unsuspend),
        ];
        let term = prop_oneof![
            Just(terms(Interval::Monthly, BillingAnchor::Calendar)),
            Just(terms(Interval::Monthly, BillingAnchor::Anniversary)),
            Just(terms(Interval::Weekly, BillingAnchor::Anniversary)),
            Just(terms(Interval::Yearly, BillingAnchor::Calendar)),
            (1u32..29).prop_map(|d| terms(Interval::Monthly, BillingAnchor::DayOfMonth(d))),
        ];
        (
            0..60 * day,
            proptest::option::of(1..40 * day),
            0usize..3,
            proptest::collection::vec((0..200 * day, kinds), 0..5),
            proptest::collection::vec(term, 3),
        )
            .prop_map(move |(start, trial, plan, changes, plans)| {
                let started_at = DateTime::from_timestamp(base + start, 0).unwrap();
                let sub = Subscription {
                    started_at,
                    trial_ends_at: trial.map(|t| started_at + Duration::seconds(t)),
                    plan,
                    changes: changes
                        .into_iter()
                        .map(|(at, kind)| Change {
                            at: started_at + Duration::seconds(at),
                            kind,
                        })
                        .collect(),
                };
                (sub, plans)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn every_instant_of_the_stretch_is_attributed_alike(
            histories in proptest::collection::vec(history_strategy(), 1..3),
            tz in prop_oneof![Just(Tz::UTC), Just(Tz::Europe__Paris), Just(Tz::America__New_York), Just(Tz::Asia__Kolkata)],
            probes in proptest::collection::vec((0i64..300 * 86_400, any::<u64>()), 20),
        ) {
            let subs: Vec<Attributable<'_>> = histories
                .iter()
                .map(|(s, plans)| Attributable { subscription: s, plans })
                .collect();
            let base = utc("2026-01-01T00:00:00Z");
            for (offset, pick) in probes {
                let at = base + Duration::seconds(offset);
                let Some((found, stretch)) = attribute_with_stretch(&subs, tz, at) else {
                    prop_assert_eq!(attribute(&subs, tz, at), None);
                    continue;
                };
                prop_assert!(stretch.contains(at), "{:?} outside {:?}", at, stretch);
                prop_assert_eq!(Some(found), attribute(&subs, tz, at));
                // Its ends and an instant anywhere inside it are attributed as `at` is.
                let width = (stretch.until - stretch.from).num_seconds().max(1);
                let inside = stretch.from + Duration::seconds((pick % width as u64) as i64);
                let last = stretch.until - Duration::nanoseconds(1);
                for t in [stretch.from, inside, last] {
                    prop_assert_eq!(attribute(&subs, tz, t), Some(found), "at {:?} in {:?} (probe {:?})", t, stretch, at);
                }
            }
        }
    }
}
