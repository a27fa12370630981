//! Reads of the tables the API serves (through `billing-store`); query-api writes none of them. Usage is priced by
//! the core's one pricing function, as rating prices it.

use std::sync::Arc;

use billing_core::aggregation::AggregationType;
use billing_core::charge::ChargeModel;
use billing_core::money::RoundingMode;
use billing_core::usage_pricing::{price_running, PricedUsage, Span};
use billing_core::Currency;
use billing_store::usage::UsageStore;
use billing_store::usage_aggregates::AggState;
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
    /// Amount so far, rounded half-up to the currency's minor unit; `null` when the charge cannot be priced from
    /// running usage (see `pricing_error`).
    pub amount: Option<Decimal>,
    /// Why the amount is missing, when it is: one charge that cannot be priced never hides the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricing_error: Option<String>,
}

/// Prices a stored aggregate with the charge model stored beside it.
fn price(
    s: &AggState,
    aggregation: AggregationType,
    period: Span,
) -> anyhow::Result<(PricedUsage, Currency)> {
    let model = ChargeModel::from_lago(
        &s.charge_model,
        &serde_json::from_str(&s.charge_properties)?,
    )?;
    let currency = Currency::parse(&s.currency)?;
    Ok((
        price_running(&model, aggregation, &s.running, period)?,
        currency,
    ))
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

    /// Every stored aggregate of a customer.
    pub async fn aggregates(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<billing_store::usage::CustomerUsage> {
        self.usage.aggregates(tenant, customer).await
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
            let period = (k.period_start, s.period_end);
            let aggregation = s.aggregation_type()?;
            let priced = price(&s, aggregation, period);
            let units = match &priced {
                Ok((p, _)) => p.units,
                Err(_) => s.running.units(aggregation, None, period.0, period.1)?,
            };
            let (amount, pricing_error) = match priced {
                Ok((p, currency)) => (Some(p.rounded(currency, RoundingMode::HalfUp)), None),
                Err(e) => {
                    tracing::warn!(tenant, customer, charge = k.charge_id, error = %e, "usage not priced");
                    (None, Some(e.to_string()))
                }
            };
            out.push(ChargeUsage {
                subscription_id: k.subscription_id,
                charge_id: k.charge_id,
                metric_code: s.metric_code,
                aggregation: s.aggregation,
                group: k.group_key,
                period_start: k.period_start,
                period_end: s.period_end,
                units,
                events_count: s.running.events_count,
                currency: s.currency,
                amount,
                pricing_error,
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
