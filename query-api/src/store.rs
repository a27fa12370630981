//! Reads of the tables the API serves. query-api writes none of them.

use std::collections::HashMap;
use std::sync::Arc;

use billing_core::aggregation::{AggregationType, Latest, RunningAggregate};
use billing_core::charge::{ChargeModel, Usage};
use billing_core::money::{round_to_minor, RoundingMode};
use billing_core::Currency;
use billing_runtime::cql::from_cql_decimal;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlDecimal;

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

#[derive(scylla::DeserializeRow)]
struct Row {
    subscription_id: String,
    charge_id: String,
    period_start: DateTime<Utc>,
    group_key: String,
    period_end: DateTime<Utc>,
    metric_code: String,
    aggregation: String,
    charge_model: String,
    charge_properties: String,
    currency: String,
    events_count: i64,
    sum: Option<CqlDecimal>,
    max: Option<CqlDecimal>,
    latest_ts: Option<DateTime<Utc>>,
    latest_event_id: Option<String>,
    latest_value: Option<CqlDecimal>,
    weighted_integral: Option<CqlDecimal>,
}

/// Prepared reads.
pub struct Store {
    session: Arc<Session>,
    aggregates: PreparedStatement,
    unique_values: PreparedStatement,
}

fn dec(d: Option<CqlDecimal>) -> anyhow::Result<Option<Decimal>> {
    d.map(|d| from_cql_decimal(&d).ok_or_else(|| anyhow::anyhow!("decimal out of range")))
        .transpose()
}

impl Store {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let aggregates = session
            .prepare(format!(
                "SELECT subscription_id, charge_id, period_start, group_key, period_end, metric_code, aggregation, \
                 charge_model, charge_properties, currency, events_count, sum, max, latest_ts, latest_event_id, \
                 latest_value, weighted_integral FROM {ks}.usage_aggregates WHERE tenant_id = ? AND customer_id = ?"
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
            .rows_stream::<Row>()?;
        let mut current = Vec::new();
        while let Some(r) = rows.try_next().await? {
            if r.period_start <= at && at < r.period_end {
                current.push(r);
            }
        }
        let mut unique: HashMap<(String, String, DateTime<Utc>, String), u64> = HashMap::new();
        if current.iter().any(|r| r.aggregation == "unique_count_agg") {
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
        for r in current {
            let agg: AggregationType =
                serde_json::from_value(serde_json::Value::String(r.aggregation.clone()))?;
            let latest = match (r.latest_ts, r.latest_event_id, dec(r.latest_value)?) {
                (Some(timestamp), Some(event_id), Some(value)) => Some(Latest {
                    timestamp,
                    event_id,
                    value,
                }),
                _ => None,
            };
            let running = RunningAggregate {
                events_count: u64::try_from(r.events_count).unwrap_or_default(),
                sum: dec(r.sum)?.unwrap_or_default(),
                max: dec(r.max)?,
                latest,
                unique: Default::default(),
                weighted_integral: dec(r.weighted_integral)?.unwrap_or_default(),
            };
            // Unique counts need only the size of the stored set, not its values.
            let units = if agg == AggregationType::UniqueCountAgg {
                let key = (
                    r.subscription_id.clone(),
                    r.charge_id.clone(),
                    r.period_start,
                    r.group_key.clone(),
                );
                Decimal::from(unique.get(&key).copied().unwrap_or_default())
            } else {
                running.units(agg, None, r.period_start, r.period_end)?
            };
            let model = ChargeModel::from_lago(
                &r.charge_model,
                &serde_json::from_str(&r.charge_properties)?,
            )?;
            let precise = model
                .evaluate(&Usage {
                    units,
                    events_count: Some(running.events_count),
                    event_values: None,
                })?
                .amount;
            let currency = Currency::parse(&r.currency)?;
            out.push(ChargeUsage {
                subscription_id: r.subscription_id,
                charge_id: r.charge_id,
                metric_code: r.metric_code,
                aggregation: r.aggregation,
                group: r.group_key,
                period_start: r.period_start,
                period_end: r.period_end,
                units,
                events_count: running.events_count,
                currency: r.currency,
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
