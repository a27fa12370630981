//! Reads of the tables the API serves (through `billing-store`); query-api writes none of them. Usage is priced by
//! the core's one pricing function, as rating prices it.

use std::sync::Arc;

use billing_core::charge::ChargeModel;
use billing_core::money::RoundingMode;
use billing_core::period::BillingPeriod;
use billing_core::usage_pricing::price_running;
use billing_core::Currency;
use billing_store::usage::UsageStore;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use scylla::client::session::Session;

/// The usage of one charge (and group) in one billing period, priced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChargeUsage {
    /// Subscription.
    pub subscription_id: String,
    /// Charge.
    pub charge_id: String,
    /// Metric.
    pub metric_code: String,
    /// Aggregation, e.g. `sum_agg`.
    pub aggregation: String,
    /// Group (value of the charge's group_by property; empty without grouping).
    pub group: String,
    /// Period start.
    pub period_start: DateTime<Utc>,
    /// Period end (exclusive).
    pub period_end: DateTime<Utc>,
    /// Aggregated units so far.
    pub units: Decimal,
    /// Events counted.
    pub events_count: u64,
    /// ISO currency.
    pub currency: String,
    /// Amount so far, rounded half-up to the currency's minor unit.
    pub amount: Decimal,
}

/// Prepared reads.
pub struct Store {
    usage: UsageStore,
}

impl Store {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        Ok(Store {
            usage: UsageStore::new(session, ks).await?,
        })
    }

    /// A customer's usage in the billing periods that contain `at`, priced with the core.
    pub async fn usage(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ChargeUsage>> {
        let stored = self.usage.aggregates(tenant, customer).await?;
        let mut out = Vec::new();
        for (k, s) in stored.aggregates {
            if !(k.period_start <= at && at < s.period_end) {
                continue;
            }
            let model = ChargeModel::from_lago(
                &s.charge_model,
                &serde_json::from_str(&s.charge_properties)?,
            )?;
            let period = BillingPeriod {
                start: k.period_start,
                end: s.period_end,
                start_date: k.period_start.date_naive(),
                end_date: s.period_end.date_naive(),
            };
            let priced = price_running(&model, s.aggregation_type()?, &s.running, &period)?;
            let currency = Currency::parse(&s.currency)?;
            out.push(ChargeUsage {
                subscription_id: k.subscription_id,
                charge_id: k.charge_id,
                metric_code: s.metric_code,
                aggregation: s.aggregation,
                group: k.group_key,
                period_start: k.period_start,
                period_end: s.period_end,
                units: priced.units,
                events_count: priced.events_count,
                currency: s.currency,
                amount: priced.rounded(currency, RoundingMode::HalfUp),
            });
        }
        out.sort_by(|a, b| {
            (&a.subscription_id, &a.charge_id, &a.group).cmp(&(
                &b.subscription_id,
                &b.charge_id,
                &b.group,
            ))
        });
        Ok(out)
    }
}
