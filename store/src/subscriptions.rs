//! ScyllaDB `subscriptions` and `subscriptions_by_customer` (migration `cql/0002_billing.cql`): every subscription
//! as the API shows it, by id and per customer newest first.
//!
//! **Writer: invoicer** (from `billing.lifecycle`). Readers: query-api, invoicer.

use billing_core::period::BillingTime;
use billing_core::proration::ProrationConvention;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a subscription is doing, as of the last lifecycle event applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Billed (or in trial, or not started yet; see the dates).
    Active,
    /// Paused: no fee until resumed (usage is still metered).
    Paused,
    /// Suspended by dunning: no fee and no usage charge until unsuspended.
    Suspended,
    /// Canceled: `ends_at` says when service stops (it may be the end of the current period).
    Canceled,
}

/// One change of a subscription, as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// `plan_change`, `pause`, `resume`, `suspend`, `unsuspend` or `cancel`.
    pub kind: String,
    /// The new plan, for a plan change.
    pub plan_code: Option<String>,
    /// When it was asked to take effect.
    pub effective_at: DateTime<Utc>,
    /// Whether it waits for the end of the period containing `effective_at`.
    pub at_period_end: bool,
}

/// A subscription as the API serves it (stored as JSON in `subscriptions.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    /// External id.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// The plan it started on.
    pub initial_plan_code: String,
    /// The plan of its latest plan change (or the initial one).
    pub plan_code: String,
    /// Status after the latest change.
    pub status: SubscriptionStatus,
    /// Calendar or anniversary periods.
    pub billing_time: BillingTime,
    /// Day-of-month anchor, if any.
    pub billing_anchor_day: Option<i32>,
    /// Fee proration convention.
    pub proration: ProrationConvention,
    /// Start of service.
    pub started_at: DateTime<Utc>,
    /// End of the trial.
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// When a cancellation was asked to take effect.
    pub canceled_at: Option<DateTime<Utc>>,
    /// Whether that cancellation waits for the period end.
    pub cancel_at_period_end: bool,
    /// Every change, in the order applied.
    pub changes: Vec<ChangeView>,
    /// Billing time of creation.
    pub created_at: DateTime<Utc>,
}

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.subscriptions (tenant_id, subscription_id, customer_id, created_at, body) VALUES (?, ?, ?, ?, ?)"
    )
}

pub(crate) fn upsert_index(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.subscriptions_by_customer (tenant_id, customer_id, created_at, subscription_id) VALUES (?, ?, ?, ?)"
    )
}

pub(crate) fn select_one(ks: &str) -> String {
    format!("SELECT body FROM {ks}.subscriptions WHERE tenant_id = ? AND subscription_id = ?")
}

pub(crate) fn select_many(ks: &str) -> String {
    format!(
        "SELECT subscription_id, body FROM {ks}.subscriptions WHERE tenant_id = ? AND subscription_id IN ?"
    )
}

pub(crate) fn select_of_customers(ks: &str) -> String {
    format!(
        "SELECT customer_id, subscription_id FROM {ks}.subscriptions_by_customer WHERE tenant_id = ? AND customer_id IN ?"
    )
}

pub(crate) fn select_of_customer(ks: &str) -> String {
    format!(
        "SELECT subscription_id FROM {ks}.subscriptions_by_customer WHERE tenant_id = ? AND customer_id = ?"
    )
}
