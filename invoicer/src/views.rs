//! The read models the API serves, derived from the reference fold: what a customer or a subscription looks like
//! after the lifecycle events applied so far.

use billing_core::subscription::ChangeKind;
use billing_schemas::reference::{Customer, Subscription};
use billing_store::customers::{AppliedCouponView, CustomerView, TopUpView, WalletView};
use billing_store::subscriptions::{ChangeView, SubscriptionStatus, SubscriptionView};

/// The customer's view, once the customer itself was created.
pub fn customer(c: &Customer) -> Option<CustomerView> {
    let record = c.record.as_ref()?;
    let mut view = CustomerView::new(record, c.created_at?);
    view.applied_coupons = c
        .coupons
        .iter()
        .map(|a| AppliedCouponView {
            applied: a.applied.clone(),
            applied_at: a.applied_at,
            removed_at: a.removed_at,
        })
        .collect();
    view.wallets = c
        .wallets
        .iter()
        .map(|w| WalletView {
            created: w.created.clone(),
            created_at: w.created_at,
            top_ups: w
                .top_ups
                .iter()
                .map(|(at, t, ..)| TopUpView {
                    top_up: t.clone(),
                    at: *at,
                })
                .collect(),
        })
        .collect();
    Some(view)
}

/// The subscription's view.
pub fn subscription(customer_id: &str, s: &Subscription) -> SubscriptionView {
    let (mut paused, mut suspended, mut canceled) = (false, false, false);
    let mut plan = s.history.plan;
    let (mut canceled_at, mut at_period_end) = (None, false);
    let mut changes = Vec::with_capacity(s.history.changes.len());
    for c in &s.history.changes {
        let (kind, plan_code, period_end) = match c.kind {
            ChangeKind::Upgrade { plan: p } => {
                plan = p;
                ("plan_change", s.plans.get(p).cloned(), false)
            }
            ChangeKind::Downgrade { plan: p } => {
                plan = p;
                ("plan_change", s.plans.get(p).cloned(), true)
            }
            ChangeKind::Pause => {
                paused = true;
                ("pause", None, false)
            }
            ChangeKind::Resume => {
                paused = false;
                ("resume", None, false)
            }
            ChangeKind::Suspend => {
                suspended = true;
                ("suspend", None, false)
            }
            ChangeKind::Unsuspend => {
                suspended = false;
                ("unsuspend", None, false)
            }
            ChangeKind::Cancel { immediate } => {
                canceled = true;
                canceled_at = Some(c.at);
                at_period_end = !immediate;
                ("cancel", None, !immediate)
            }
        };
        changes.push(ChangeView {
            kind: kind.into(),
            plan_code,
            effective_at: c.at,
            at_period_end: period_end,
        });
    }
    let status = if canceled {
        SubscriptionStatus::Canceled
    } else if suspended {
        SubscriptionStatus::Suspended
    } else if paused {
        SubscriptionStatus::Paused
    } else {
        SubscriptionStatus::Active
    };
    SubscriptionView {
        subscription_id: s.id.clone(),
        customer_id: customer_id.into(),
        initial_plan_code: s.plans[s.history.plan].clone(),
        plan_code: s.plans.get(plan).cloned().unwrap_or_default(),
        status,
        billing_time: s.billing_time,
        billing_anchor_day: s.anchor_day.map(|d| d as i32),
        proration: s.proration,
        started_at: s.history.started_at,
        trial_ends_at: s.history.trial_ends_at,
        canceled_at,
        cancel_at_period_end: at_period_end,
        changes,
        created_at: s.created_at,
    }
}
