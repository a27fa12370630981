//! Subscription lifecycle over a period: start, trial, upgrade, downgrade, cancel, pause/resume,
//! turned into time segments and then into prorated subscription-fee lines.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::period::{BillingPeriod, Schedule};
use crate::proration::{ChangeEdge, ProrationConvention};

/// A change requested on a subscription; plans are indices into the caller's plan list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Immediate switch to a plan: credit the unused part of the old one, charge the new one prorated.
    Upgrade {
        /// Index of the new plan.
        plan: usize,
    },
    /// Switch to a plan at the end of the period that contains the request.
    Downgrade {
        /// Index of the new plan.
        plan: usize,
    },
    /// End of the subscription, now (with credit) or at the end of the current period.
    Cancel {
        /// True for immediate cancellation.
        immediate: bool,
    },
    /// Stop billing the fee from this day.
    Pause,
    /// Bill the fee again from this day.
    Resume,
    /// Dunning's suspension: no fee and no usage charge from this instant.
    Suspend,
    /// The end of a suspension.
    Unsuspend,
}

/// One requested change and when it was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// When the change was made.
    pub at: DateTime<Utc>,
    /// What changes.
    pub kind: ChangeKind,
}

/// A subscription's history, as far as fees are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// End of the free trial, if any; the first fee starts here.
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// Index of the first plan.
    pub plan: usize,
    /// Changes, in any order.
    pub changes: Vec<Change>,
}

/// The subscription's state between two transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Index of the plan in force.
    pub plan: usize,
    /// The subscription has started.
    pub started: bool,
    /// In free trial.
    pub trial: bool,
    /// Paused.
    pub paused: bool,
    /// Suspended by dunning.
    pub suspended: bool,
    /// Ended by a cancellation.
    pub ended: bool,
}

impl State {
    /// Whether the subscription fee accrues in this state.
    pub fn billable(&self) -> bool {
        self.started && !self.trial && !self.paused && !self.suspended && !self.ended
    }

    /// Whether usage is attributed to this state (trial and pause included, as usage is still metered; a
    /// suspension stops it).
    pub fn live(&self) -> bool {
        self.started && !self.ended && !self.suspended
    }
}

/// A time range of a period during which the state does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub to: DateTime<Utc>,
    /// The state over the range.
    pub state: State,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Start,
    TrialEnd,
    SetPlan(usize),
    End,
    Pause,
    Resume,
    Suspend,
    Unsuspend,
}

/// Cuts `period` into segments of constant state, applying every change with its billing semantics.
///
/// Cancelling during a free trial (immediately, or at period end while the trial runs) ends the
/// subscription no later than the trial's end, so nothing is billed for the trial, as Stripe and Lago do
/// (Stripe: a trialing subscription cancelled at period end ends when its trial ends; Lago: terminating a
/// subscription in trial issues no subscription fee).
pub fn segments(
    sub: &Subscription,
    schedule: &Schedule,
    convention: ProrationConvention,
    period: &BillingPeriod,
) -> Result<Vec<Segment>> {
    segments_with(
        sub,
        &|t| schedule.period_containing(t).map(|p| p.end),
        convention,
        schedule.timezone(),
        period,
    )
}

/// [`segments`] where the end of the billing period containing an instant (for downgrades and
/// cancellations at period end) comes from `period_end_at`, so that it can follow a schedule that
/// changes over the subscription's life.
pub fn segments_with(
    sub: &Subscription,
    period_end_at: &dyn Fn(DateTime<Utc>) -> Result<DateTime<Utc>>,
    convention: ProrationConvention,
    tz: chrono_tz::Tz,
    period: &BillingPeriod,
) -> Result<Vec<Segment>> {
    let begin = |t| convention.effective_instant(t, ChangeEdge::Begin, tz);
    let mut actions = vec![(begin(sub.started_at), Action::Start)];
    let trial_end = sub.trial_ends_at.filter(|e| *e > sub.started_at);
    if let Some(trial_end) = sub.trial_ends_at {
        if trial_end < sub.started_at {
            return Err(Error::InvalidRequest(
                "trial ends before the subscription starts".into(),
            ));
        }
        actions.push((begin(trial_end), Action::TrialEnd));
    }
    let in_trial = |t: DateTime<Utc>| trial_end.is_some_and(|e| t < e);
    let mut changes = sub.changes.clone();
    changes.sort_by_key(|c| c.at);
    for c in &changes {
        if c.at < sub.started_at {
            return Err(Error::InvalidRequest(format!(
                "change at {} is before the subscription start",
                c.at
            )));
        }
        let at_period_end = || period_end_at(c.at);
        actions.push(match c.kind {
            ChangeKind::Upgrade { plan } => (begin(c.at), Action::SetPlan(plan)),
            ChangeKind::Downgrade { plan } => (at_period_end()?, Action::SetPlan(plan)),
            ChangeKind::Cancel { immediate } => {
                let mut end = if immediate {
                    convention.effective_instant(c.at, ChangeEdge::Cancel, tz)
                } else {
                    at_period_end()?
                };
                // A cancellation made during the trial never reaches past the trial's end.
                if let Some(e) = trial_end.filter(|_| in_trial(c.at)) {
                    end = end.min(begin(e));
                }
                (end, Action::End)
            }
            ChangeKind::Pause => (begin(c.at), Action::Pause),
            ChangeKind::Resume => (begin(c.at), Action::Resume),
            ChangeKind::Suspend => (begin(c.at), Action::Suspend),
            ChangeKind::Unsuspend => (begin(c.at), Action::Unsuspend),
        });
    }
    // Stable sort: at the same instant, the start comes first, then the trial end, then changes in order.
    actions.sort_by_key(|(t, _)| *t);

    let mut state = State {
        plan: sub.plan,
        started: false,
        trial: false,
        paused: false,
        suspended: false,
        ended: false,
    };
    let mut timeline: Vec<(DateTime<Utc>, State)> = Vec::with_capacity(actions.len());
    for (t, action) in actions {
        if state.ended && matches!(action, Action::TrialEnd) {
            // The trial was cut short by a cancellation: it has nothing left to end.
            continue;
        }
        if state.ended {
            return Err(Error::InvalidRequest(format!(
                "change at {t} comes after the subscription ended"
            )));
        }
        match action {
            Action::Start => {
                state.started = true;
                state.trial = sub.trial_ends_at.is_some_and(|e| e > sub.started_at);
            }
            Action::TrialEnd => state.trial = false,
            Action::SetPlan(p) => state.plan = p,
            Action::End => state.ended = true,
            Action::Pause if state.paused => {
                return Err(Error::InvalidRequest(
                    "pause of a paused subscription".into(),
                ))
            }
            Action::Pause => state.paused = true,
            Action::Resume if !state.paused => {
                return Err(Error::InvalidRequest(
                    "resume of a subscription that is not paused".into(),
                ))
            }
            Action::Resume => state.paused = false,
            Action::Suspend if state.suspended => {
                return Err(Error::InvalidRequest(
                    "suspension of a suspended subscription".into(),
                ))
            }
            Action::Suspend => state.suspended = true,
            Action::Unsuspend if !state.suspended => {
                return Err(Error::InvalidRequest(
                    "end of a suspension of a subscription that is not suspended".into(),
                ))
            }
            Action::Unsuspend => state.suspended = false,
        }
        timeline.push((t, state));
    }

    let initial = State {
        plan: sub.plan,
        started: false,
        trial: false,
        paused: false,
        suspended: false,
        ended: false,
    };
    let at_start = timeline
        .iter()
        .take_while(|(t, _)| *t <= period.start)
        .last()
        .map_or(initial, |(_, s)| *s);
    let mut out = vec![Segment {
        from: period.start,
        to: period.end,
        state: at_start,
    }];
    for (t, s) in timeline
        .iter()
        .filter(|(t, _)| period.start < *t && *t < period.end)
    {
        let last = out.last_mut().ok_or(Error::Overflow("segments"))?;
        if last.state == *s {
            continue;
        }
        if last.from == *t {
            last.state = *s;
            continue;
        }
        last.to = *t;
        out.push(Segment {
            from: *t,
            to: period.end,
            state: *s,
        });
    }
    Ok(out)
}

/// Whether a fee line charges or credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeKind {
    /// A (possibly prorated) charge of a plan's fee.
    Charge,
    /// A credit of the unused part of a fee already billed in advance.
    Credit,
}

/// One subscription-fee line before rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeLine {
    /// Charge or credit.
    pub kind: FeeKind,
    /// Index of the plan.
    pub plan: usize,
    /// Service start.
    pub from: DateTime<Utc>,
    /// Service end (exclusive).
    pub to: DateTime<Utc>,
    /// Proration factor.
    pub factor: Decimal,
    /// Precise signed amount (negative for credits).
    pub amount: Decimal,
}

/// Subscription-fee lines of one period.
///
/// In arrears, each billable segment is charged for what it served. In advance, the fee is charged at
/// the start for the rest of the period, and every later change credits the unused rest of the old
/// state and charges the rest of the new one; both timings add up to the same net amount.
pub fn fee_lines(
    segs: &[Segment],
    fees: &[Decimal],
    pay_in_advance: bool,
    period: &BillingPeriod,
    convention: ProrationConvention,
    schedule: &Schedule,
) -> Result<Vec<FeeLine>> {
    let tz = schedule.timezone();
    let fee_of = |s: &State| -> Result<Decimal> {
        if !s.billable() {
            return Ok(Decimal::ZERO);
        }
        fees.get(s.plan)
            .copied()
            .ok_or_else(|| Error::InvalidRequest(format!("unknown plan index {}", s.plan)))
    };
    let line = |kind, plan, from, to, fee: Decimal| -> Result<FeeLine> {
        let factor = convention.factor(period, from, to, tz)?;
        let mut amount = fee
            .checked_mul(factor)
            .ok_or(Error::Overflow("fee proration"))?;
        if kind == FeeKind::Credit {
            amount = -amount;
        }
        Ok(FeeLine {
            kind,
            plan,
            from,
            to,
            factor,
            amount,
        })
    };
    let mut out = Vec::new();
    if !pay_in_advance {
        for s in segs {
            let fee = fee_of(&s.state)?;
            if !fee.is_zero() {
                out.push(line(FeeKind::Charge, s.state.plan, s.from, s.to, fee)?);
            }
        }
        return Ok(out);
    }
    if let Some(first) = segs.first() {
        let fee = fee_of(&first.state)?;
        if !fee.is_zero() {
            out.push(line(
                FeeKind::Charge,
                first.state.plan,
                first.from,
                period.end,
                fee,
            )?);
        }
    }
    for w in segs.windows(2) {
        let (old, new) = (&w[0].state, &w[1].state);
        if (old.billable(), old.plan) == (new.billable(), new.plan) {
            continue;
        }
        let (a, b) = (fee_of(old)?, fee_of(new)?);
        let t = w[1].from;
        if !a.is_zero() {
            out.push(line(FeeKind::Credit, old.plan, t, period.end, a)?);
        }
        if !b.is_zero() {
            out.push(line(FeeKind::Charge, new.plan, t, period.end, b)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{round_to_minor, RoundingMode};
    use crate::period::{BillingTime, Interval};
    use crate::Currency;
    use chrono_tz::Tz;
    use rust_decimal_macros::dec;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn run(
        sub: &Subscription,
        fees: &[Decimal],
        advance: bool,
        conv: ProrationConvention,
        in_period: &str,
    ) -> Vec<(FeeKind, usize, Decimal)> {
        let sched = Schedule::new(
            Interval::Monthly,
            BillingTime::Calendar,
            sub.started_at,
            Tz::UTC,
        )
        .unwrap();
        let p = sched.period_containing(utc(in_period)).unwrap();
        let segs = segments(sub, &sched, conv, &p).unwrap();
        let usd = Currency::parse("USD").unwrap();
        fee_lines(&segs, fees, advance, &p, conv, &sched)
            .unwrap()
            .into_iter()
            .map(|l| {
                (
                    l.kind,
                    l.plan,
                    round_to_minor(l.amount, usd, RoundingMode::HalfUp),
                )
            })
            .collect()
    }

    fn sub(start: &str, changes: Vec<Change>) -> Subscription {
        Subscription {
            started_at: utc(start),
            trial_ends_at: None,
            plan: 0,
            changes,
        }
    }

    // Lago docs, "Upgrades and downgrades" (https://getlago.com/docs/guide/subscriptions/upgrades-downgrades):
    // Plan A (€100/month, calendar) is upgraded to Plan B (€200/month) on January 15. Lago's example is
    // paid in arrears: "Invoice for Plan A: 14 days prorated = €45.16 (14/31 × €100)", then Plan B for the
    // remaining 17 days = 200 × 17/31 = €109.68. The formulation is days counted inclusively over the
    // actual 31-day month, with the change day belonging to the new plan (A: Jan 1..=14, B: Jan 15..=31).
    // Paid in advance, Lago instead credits the unused days of A: 100 × 17/31 = €54.84, so A nets
    // 100 − 54.84 = €45.16, and B is charged €109.68: the same two figures.
    #[test]
    fn lago_upgrade_example_in_advance_and_in_arrears() {
        let s = sub(
            "2025-12-01T00:00:00Z",
            vec![Change {
                at: utc("2026-01-15T09:30:00Z"),
                kind: ChangeKind::Upgrade { plan: 1 },
            }],
        );
        let fees = [dec!(100), dec!(200)];
        let adv = run(
            &s,
            &fees,
            true,
            ProrationConvention::Days,
            "2026-01-20T00:00:00Z",
        );
        assert_eq!(
            adv,
            vec![
                (FeeKind::Charge, 0, dec!(100.00)),
                (FeeKind::Credit, 0, dec!(-54.84)),
                (FeeKind::Charge, 1, dec!(109.68)),
            ]
        );
        assert_eq!(adv[0].2 + adv[1].2, dec!(45.16));
        let arr = run(
            &s,
            &fees,
            false,
            ProrationConvention::Days,
            "2026-01-20T00:00:00Z",
        );
        assert_eq!(
            arr,
            vec![
                (FeeKind::Charge, 0, dec!(45.16)),
                (FeeKind::Charge, 1, dec!(109.68))
            ]
        );
    }

    // Stripe docs, "Prorations" (https://docs.stripe.com/billing/subscriptions/prorations): "if a customer
    // upgrades from a 10 USD per month subscription to a 20 USD option ... halfway through the billing
    // period, the customer is billed an additional 5 USD: -5 USD for unused time on the initial price, and
    // 10 USD for the remaining time on the new price."
    #[test]
    fn stripe_mid_period_change_nets_five_dollars() {
        let s = sub(
            "2026-04-01T00:00:00Z",
            vec![Change {
                at: utc("2026-04-16T00:00:00Z"),
                kind: ChangeKind::Upgrade { plan: 1 },
            }],
        );
        let lines = run(
            &s,
            &[dec!(10), dec!(20)],
            true,
            ProrationConvention::Seconds,
            "2026-04-02T00:00:00Z",
        );
        assert_eq!(
            lines,
            vec![
                (FeeKind::Charge, 0, dec!(10.00)),
                (FeeKind::Credit, 0, dec!(-5.00)),
                (FeeKind::Charge, 1, dec!(10.00)),
            ]
        );
        assert_eq!(lines[1].2 + lines[2].2, dec!(5.00));
    }

    // Kill Bill's pro-ration example (Kill Bill user guides, https://docs.killbill.io/, invoice pro-ration;
    // figures as quoted in issue #3): a $12/month plan kept for 22 days of a 28-day month is billed
    // 12 × 0.785714286 (22/28 with the factor kept at 9 decimals, half-up) = 9.428571432 → $9.43.
    #[test]
    fn kill_bill_22_of_28_days() {
        let s = sub(
            "2026-02-01T00:00:00Z",
            vec![Change {
                at: utc("2026-02-23T08:00:00Z"),
                kind: ChangeKind::Cancel { immediate: true },
            }],
        );
        let arr = run(
            &s,
            &[dec!(12)],
            false,
            ProrationConvention::DaysExclusiveEnd,
            "2026-02-05T00:00:00Z",
        );
        assert_eq!(arr, vec![(FeeKind::Charge, 0, dec!(9.43))]);
        let adv = run(
            &s,
            &[dec!(12)],
            true,
            ProrationConvention::DaysExclusiveEnd,
            "2026-02-05T00:00:00Z",
        );
        assert_eq!(
            adv,
            vec![
                (FeeKind::Charge, 0, dec!(12.00)),
                (FeeKind::Credit, 0, dec!(-2.57))
            ]
        );
        // Under Lago's inclusive days, cancelling on Feb 22 keeps the same 22 days (Feb 1..=22).
        let s2 = sub(
            "2026-02-01T00:00:00Z",
            vec![Change {
                at: utc("2026-02-22T08:00:00Z"),
                kind: ChangeKind::Cancel { immediate: true },
            }],
        );
        let arr = run(
            &s2,
            &[dec!(12)],
            false,
            ProrationConvention::Days,
            "2026-02-05T00:00:00Z",
        );
        assert_eq!(arr, vec![(FeeKind::Charge, 0, dec!(9.43))]);
    }

    #[test]
    fn downgrade_and_cancel_at_period_end_wait_for_the_next_period() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            vec![
                Change {
                    at: utc("2026-01-10T00:00:00Z"),
                    kind: ChangeKind::Downgrade { plan: 1 },
                },
                Change {
                    at: utc("2026-02-10T00:00:00Z"),
                    kind: ChangeKind::Cancel { immediate: false },
                },
            ],
        );
        let fees = [dec!(100), dec!(50)];
        let jan = run(
            &s,
            &fees,
            true,
            ProrationConvention::Days,
            "2026-01-20T00:00:00Z",
        );
        assert_eq!(jan, vec![(FeeKind::Charge, 0, dec!(100.00))]);
        let feb = run(
            &s,
            &fees,
            true,
            ProrationConvention::Days,
            "2026-02-20T00:00:00Z",
        );
        assert_eq!(feb, vec![(FeeKind::Charge, 1, dec!(50.00))]);
        let mar = run(
            &s,
            &fees,
            true,
            ProrationConvention::Days,
            "2026-03-20T00:00:00Z",
        );
        assert!(mar.is_empty());
    }

    #[test]
    fn pause_bills_nothing_for_paused_days() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            vec![
                Change {
                    at: utc("2026-01-11T00:00:00Z"),
                    kind: ChangeKind::Pause,
                },
                Change {
                    at: utc("2026-01-21T00:00:00Z"),
                    kind: ChangeKind::Resume,
                },
            ],
        );
        // 31 days, 10 paused: 21/31 of 31.00 = 21.00 in arrears.
        let arr = run(
            &s,
            &[dec!(31)],
            false,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        assert_eq!(
            arr,
            vec![
                (FeeKind::Charge, 0, dec!(10.00)),
                (FeeKind::Charge, 0, dec!(11.00))
            ]
        );
        let adv = run(
            &s,
            &[dec!(31)],
            true,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        let net: Decimal = adv.iter().map(|l| l.2).sum();
        assert_eq!(net, dec!(21.00));
    }

    #[test]
    fn a_suspension_bills_no_fee_and_takes_no_usage() {
        let s = sub(
            "2026-01-01T00:00:00Z",
            vec![
                Change {
                    at: utc("2026-01-11T00:00:00Z"),
                    kind: ChangeKind::Suspend,
                },
                Change {
                    at: utc("2026-01-21T00:00:00Z"),
                    kind: ChangeKind::Unsuspend,
                },
            ],
        );
        // Like a pause for the fee: 21/31 of 31.00 in arrears.
        let arr = run(
            &s,
            &[dec!(31)],
            false,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        assert_eq!(arr.iter().map(|l| l.2).sum::<Decimal>(), dec!(21.00));
        // Unlike a pause, usage is not attributed while suspended.
        let period = BillingPeriod {
            start: utc("2026-01-01T00:00:00Z"),
            end: utc("2026-02-01T00:00:00Z"),
            start_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            end_date: chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        };
        let segs = segments_with(
            &s,
            &|_| Ok(period.end),
            ProrationConvention::Seconds,
            chrono_tz::UTC,
            &period,
        )
        .unwrap();
        let live: Vec<bool> = segs.iter().map(|g| g.state.live()).collect();
        assert_eq!(live, vec![true, false, true]);
        let mut twice = s.clone();
        twice.changes.push(Change {
            at: utc("2026-01-12T00:00:00Z"),
            kind: ChangeKind::Suspend,
        });
        assert!(segments_with(
            &twice,
            &|_| Ok(period.end),
            ProrationConvention::Seconds,
            chrono_tz::UTC,
            &period
        )
        .is_err());
    }

    #[test]
    fn trial_shifts_the_first_fee() {
        let mut s = sub("2026-01-01T00:00:00Z", vec![]);
        s.trial_ends_at = Some(utc("2026-01-15T00:00:00Z"));
        let adv = run(
            &s,
            &[dec!(31)],
            true,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        assert_eq!(adv, vec![(FeeKind::Charge, 0, dec!(17.00))]);
        let feb = run(
            &s,
            &[dec!(31)],
            true,
            ProrationConvention::Days,
            "2026-02-05T00:00:00Z",
        );
        assert_eq!(feb, vec![(FeeKind::Charge, 0, dec!(31.00))]);
    }

    const ALL_CONVENTIONS: [ProrationConvention; 4] = [
        ProrationConvention::Days,
        ProrationConvention::DaysExclusiveEnd,
        ProrationConvention::Seconds,
        ProrationConvention::ThirtyDay,
    ];

    // Stripe (trials docs, https://docs.stripe.com/billing/subscriptions/trials): a subscription cancelled
    // during its trial is never charged, and the current period of a trialing subscription ends with the
    // trial, so cancelling at period end ends it then; Lago (free trial docs): the subscription fee is only
    // billed once the trial is over, so terminating during the trial bills no fee. Both timings, every
    // convention: nothing for the trial days, in January or after.
    #[test]
    fn cancelling_during_the_trial_bills_nothing() {
        let cancels = [
            ("2026-01-10T09:00:00Z", true),
            ("2026-01-15T10:00:00Z", true), // trial's last (partial) day
            ("2026-01-10T09:00:00Z", false),
        ];
        for conv in ALL_CONVENTIONS {
            for (at, immediate) in cancels {
                let mut s = sub(
                    "2026-01-01T00:00:00Z",
                    vec![Change {
                        at: utc(at),
                        kind: ChangeKind::Cancel { immediate },
                    }],
                );
                s.trial_ends_at = Some(utc("2026-01-15T12:00:00Z"));
                for advance in [true, false] {
                    for month in ["2026-01-05T00:00:00Z", "2026-02-05T00:00:00Z"] {
                        let lines = run(&s, &[dec!(31)], advance, conv, month);
                        assert!(
                            lines.is_empty(),
                            "{conv:?} cancel {at} immediate={immediate} advance={advance} {month}: {lines:?}"
                        );
                    }
                }
            }
        }
        // A trial that ends exactly at a period start, cancelled inside it: the next period (whose fee
        // would be charged in advance at its start) bills nothing either.
        let mut s = sub(
            "2025-12-18T00:00:00Z",
            vec![Change {
                at: utc("2025-12-25T00:00:00Z"),
                kind: ChangeKind::Cancel { immediate: true },
            }],
        );
        s.trial_ends_at = Some(utc("2026-01-01T00:00:00Z"));
        for conv in ALL_CONVENTIONS {
            assert!(run(&s, &[dec!(31)], true, conv, "2026-01-05T00:00:00Z").is_empty());
            assert!(run(&s, &[dec!(31)], true, conv, "2025-12-20T00:00:00Z").is_empty());
        }
    }

    // Once the trial is over, the fee charged in advance from the trial's end is credited for the days the
    // cancellation leaves unused (Lago's and Stripe's credit of unused time), so only the days served are
    // paid, exactly as in arrears.
    #[test]
    fn cancelling_after_the_trial_credits_the_unused_advance_fee() {
        let mut s = sub(
            "2025-12-20T00:00:00Z",
            vec![Change {
                at: utc("2026-01-25T08:00:00Z"),
                kind: ChangeKind::Cancel { immediate: true },
            }],
        );
        s.trial_ends_at = Some(utc("2026-01-19T00:00:00Z"));
        let adv = run(
            &s,
            &[dec!(31)],
            true,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        // Charged Jan 19..=31 (13 days) at the trial's end; the cancellation on Jan 25 (billed, Lago)
        // credits Jan 26..=31 (6 days): 7 days paid.
        assert_eq!(
            adv,
            vec![
                (FeeKind::Charge, 0, dec!(13.00)),
                (FeeKind::Credit, 0, dec!(-6.00))
            ]
        );
        let arr = run(
            &s,
            &[dec!(31)],
            false,
            ProrationConvention::Days,
            "2026-01-05T00:00:00Z",
        );
        assert_eq!(arr, vec![(FeeKind::Charge, 0, dec!(7.00))]);
        // December is entirely trial: nothing.
        assert!(run(
            &s,
            &[dec!(31)],
            true,
            ProrationConvention::Days,
            "2025-12-25T00:00:00Z"
        )
        .is_empty());
    }

    #[test]
    fn start_mid_period_is_prorated_and_invalid_histories_are_rejected() {
        let s = sub("2026-01-15T10:00:00Z", vec![]);
        let adv = run(
            &s,
            &[dec!(100)],
            true,
            ProrationConvention::Days,
            "2026-01-20T00:00:00Z",
        );
        assert_eq!(adv, vec![(FeeKind::Charge, 0, dec!(54.84))]);
        let bad = sub(
            "2026-01-15T10:00:00Z",
            vec![Change {
                at: utc("2026-01-16T00:00:00Z"),
                kind: ChangeKind::Resume,
            }],
        );
        let sched = Schedule::new(
            Interval::Monthly,
            BillingTime::Calendar,
            bad.started_at,
            Tz::UTC,
        )
        .unwrap();
        let p = sched.period_containing(bad.started_at).unwrap();
        assert!(segments(&bad, &sched, ProrationConvention::Days, &p).is_err());
    }
}
