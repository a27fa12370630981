//! Reads of the tables the API serves. query-api writes none of them.

use std::collections::HashMap;
use std::sync::Arc;

use billing_core::aggregation::AggregationType;
use billing_core::charge::{ChargeModel, Usage};
use billing_core::money::{round_to_minor, RoundingMode};
use billing_core::Currency;
use billing_rating::{AggregateRow, AGGREGATE_COLUMNS};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

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
    session: Arc<Session>,
    aggregates: PreparedStatement,
    unique_values: PreparedStatement,
}

impl Store {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let aggregates = session
            .prepare(format!(
                "SELECT {AGGREGATE_COLUMNS} FROM {ks}.usage_aggregates WHERE tenant_id = ? AND customer_id = ?"
            ))
            .await?;
        let unique_values = session
            .prepare(format!(
                "SELECT subscription_id, charge_id, period_start, group_key FROM {ks}.usage_unique_values \
                 WHERE tenant_id = ? AND customer_id = ?"
            ))
            .await?;
        Ok(Store {
            session,
            aggregates,
            unique_values,
        })
    }

    /// A customer's usage in the billing periods that contain `at`, priced with the core.
    pub async fn usage(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ChargeUsage>> {
        let mut rows = self
            .session
            .execute_iter(self.aggregates.clone(), (tenant, customer))
            .await?
            .rows_stream::<AggregateRow>()?;
        let mut current = Vec::new();
        while let Some(r) = rows.try_next().await? {
            let (key, state) = r.into_state()?;
            if key.period_start <= at && at < state.period_end {
                current.push((key, state));
            }
        }
        let mut unique: HashMap<(String, String, DateTime<Utc>, String), u64> = HashMap::new();
        if current
            .iter()
            .any(|(_, s)| s.aggregation == "unique_count_agg")
        {
            let mut vals = self
                .session
                .execute_iter(self.unique_values.clone(), (tenant, customer))
                .await?
                .rows_stream::<(String, String, DateTime<Utc>, String)>()?;
            while let Some(k) = vals.try_next().await? {
                *unique.entry(k).or_default() += 1;
            }
        }
        let mut out = Vec::with_capacity(current.len());
        for (k, s) in current {
            let agg: AggregationType =
                serde_json::from_value(serde_json::Value::String(s.aggregation.clone()))?;
            // Unique counts need only the size of the stored set, not its values.
            let units = if agg == AggregationType::UniqueCountAgg {
                let id = (
                    k.subscription_id.clone(),
                    k.charge_id.clone(),
                    k.period_start,
                    k.group_key.clone(),
                );
                Decimal::from(unique.get(&id).copied().unwrap_or_default())
            } else {
                s.running.units(agg, None, k.period_start, s.period_end)?
            };
            let model = ChargeModel::from_lago(
                &s.charge_model,
                &serde_json::from_str(&s.charge_properties)?,
            )?;
            let events_count = s.running.events_count;
            let precise = model
                .evaluate(&Usage {
                    units,
                    events_count: Some(events_count),
                    event_values: None,
                })?
                .amount;
            let currency = Currency::parse(&s.currency)?;
            out.push(ChargeUsage {
                subscription_id: k.subscription_id,
                charge_id: k.charge_id,
                metric_code: s.metric_code,
                aggregation: s.aggregation,
                group: k.group_key,
                period_start: k.period_start,
                period_end: s.period_end,
                units,
                events_count,
                currency: s.currency,
                amount: round_to_minor(precise, currency, RoundingMode::HalfUp),
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
