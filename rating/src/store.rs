//! The tables rating owns: `usage_aggregates`, `usage_unique_values` and `usage_dedup` in ScyllaDB, and
//! `usage_events` in ClickHouse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use billing_core::aggregation::{Latest, RunningAggregate};
use billing_runtime::cql::{from_cql_decimal, to_cql_decimal};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDecimal, MaybeUnset};
use serde::Serialize;

/// Identifies one aggregate within a customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    /// Subscription.
    pub subscription_id: String,
    /// Charge.
    pub charge_id: String,
    /// Billing period start.
    pub period_start: DateTime<Utc>,
    /// Value of the charge's group_by property ("" without grouping).
    pub group_key: String,
}

/// One aggregate, its pricing context, and the last event offset it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggState {
    /// Period end.
    pub period_end: DateTime<Utc>,
    /// Metric code.
    pub metric_code: String,
    /// Core aggregation name (e.g. `sum_agg`).
    pub aggregation: String,
    /// Lago charge model name.
    pub charge_model: String,
    /// Lago charge properties, JSON.
    pub charge_properties: String,
    /// ISO currency.
    pub currency: String,
    /// The running aggregate.
    pub running: RunningAggregate,
    /// Kafka partition of the customer.
    pub last_partition: i32,
    /// Offset of the last event included.
    pub last_offset: i64,
}

/// Everything stored about one customer's usage.
#[derive(Debug, Default)]
pub struct CustomerUsage {
    /// Aggregates by key.
    pub aggregates: HashMap<AggKey, AggState>,
    /// Event ids already counted.
    pub seen: HashSet<String>,
}

/// A row of ClickHouse `usage_events`; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct UsageEventRow {
    pub tenant_id: String,
    pub event_id: String,
    pub customer_id: String,
    pub subscription_id: String,
    pub metric_code: String,
    /// Event time, epoch seconds.
    pub timestamp: u32,
    /// Kafka append time, epoch seconds.
    pub ingested_at: u32,
    /// Decimal(38, 9).
    pub value: i128,
    /// Rated amount, Decimal(38, 9).
    pub amount: i128,
    pub currency: String,
    /// JSON object text.
    pub properties: String,
    pub kafka_partition: u16,
    pub kafka_offset: u64,
}

/// Prepared statements and clients.
pub struct Store {
    session: Arc<Session>,
    ch: clickhouse::Client,
    select_aggregates: PreparedStatement,
    select_unique: PreparedStatement,
    select_dedup: PreparedStatement,
    upsert_aggregate: PreparedStatement,
    insert_unique: PreparedStatement,
    insert_dedup: PreparedStatement,
}

/// How many CQL writes a checkpoint keeps in flight.
const WRITE_CONCURRENCY: usize = 64;

/// The columns of `usage_aggregates` that [`AggregateRow`] reads, in its order.
pub const AGGREGATE_COLUMNS: &str = "subscription_id, charge_id, period_start, group_key, period_end, metric_code, \
    aggregation, charge_model, charge_properties, currency, events_count, sum, max, latest_ts, latest_event_id, \
    latest_value, weighted_integral, last_partition, last_offset";

/// One row of `usage_aggregates` as stored; readers of the table (rating, query-api) decode it with
/// [`AggregateRow::into_state`].
#[derive(scylla::DeserializeRow)]
#[allow(missing_docs)]
pub struct AggregateRow {
    pub subscription_id: String,
    pub charge_id: String,
    pub period_start: DateTime<Utc>,
    pub group_key: String,
    pub period_end: DateTime<Utc>,
    pub metric_code: String,
    pub aggregation: String,
    pub charge_model: String,
    pub charge_properties: String,
    pub currency: String,
    pub events_count: i64,
    pub sum: Option<CqlDecimal>,
    pub max: Option<CqlDecimal>,
    pub latest_ts: Option<DateTime<Utc>>,
    pub latest_event_id: Option<String>,
    pub latest_value: Option<CqlDecimal>,
    pub weighted_integral: Option<CqlDecimal>,
    pub last_partition: i32,
    pub last_offset: i64,
}

impl AggregateRow {
    /// The key and state this row stores (unique values are kept in their own table and start empty).
    pub fn into_state(self) -> anyhow::Result<(AggKey, AggState)> {
        let latest = match (
            self.latest_ts,
            self.latest_event_id,
            dec(self.latest_value)?,
        ) {
            (Some(timestamp), Some(event_id), Some(value)) => Some(Latest {
                timestamp,
                event_id,
                value,
            }),
            _ => None,
        };
        let running = RunningAggregate {
            events_count: u64::try_from(self.events_count).unwrap_or_default(),
            sum: dec(self.sum)?.unwrap_or_default(),
            max: dec(self.max)?,
            latest,
            unique: Default::default(),
            weighted_integral: dec(self.weighted_integral)?.unwrap_or_default(),
        };
        let key = AggKey {
            subscription_id: self.subscription_id,
            charge_id: self.charge_id,
            period_start: self.period_start,
            group_key: self.group_key,
        };
        let state = AggState {
            period_end: self.period_end,
            metric_code: self.metric_code,
            aggregation: self.aggregation,
            charge_model: self.charge_model,
            charge_properties: self.charge_properties,
            currency: self.currency,
            running,
            last_partition: self.last_partition,
            last_offset: self.last_offset,
        };
        Ok((key, state))
    }
}

/// The bound values of `upsert_aggregate`, in statement order (the last one is the write timestamp).
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct AggWrite<'a> {
    tenant_id: &'a str,
    customer_id: &'a str,
    subscription_id: &'a str,
    charge_id: &'a str,
    period_start: DateTime<Utc>,
    group_key: &'a str,
    period_end: DateTime<Utc>,
    metric_code: &'a str,
    aggregation: &'a str,
    charge_model: &'a str,
    charge_properties: &'a str,
    currency: &'a str,
    events_count: i64,
    sum: CqlDecimal,
    // Absent values are left unset, not written as NULL: a NULL is a tombstone, and tombstones make reads slow.
    max: MaybeUnset<CqlDecimal>,
    latest_ts: MaybeUnset<DateTime<Utc>>,
    latest_event_id: MaybeUnset<&'a str>,
    latest_value: MaybeUnset<CqlDecimal>,
    weighted_integral: CqlDecimal,
    last_partition: i32,
    last_offset: i64,
    write_timestamp: i64,
}

fn unset_if_none<T>(v: Option<T>) -> MaybeUnset<T> {
    v.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

fn dec(d: Option<CqlDecimal>) -> anyhow::Result<Option<Decimal>> {
    d.map(|d| from_cql_decimal(&d).ok_or_else(|| anyhow::anyhow!("decimal out of range")))
        .transpose()
}

impl Store {
    /// Prepare every statement once.
    pub async fn new(
        session: Arc<Session>,
        ch: clickhouse::Client,
        ks: &str,
    ) -> anyhow::Result<Self> {
        let prepare = |q: String| {
            let session = session.clone();
            async move { session.prepare(q).await }
        };
        let select_aggregates = prepare(format!(
            "SELECT subscription_id, charge_id, period_start, group_key, period_end, metric_code, aggregation, \
             charge_model, charge_properties, currency, events_count, sum, max, latest_ts, latest_event_id, \
             latest_value, weighted_integral, last_partition, last_offset \
             FROM {ks}.usage_aggregates WHERE tenant_id = ? AND customer_id = ?"
        ))
        .await?;
        let select_unique = prepare(format!(
            "SELECT subscription_id, charge_id, period_start, group_key, value FROM {ks}.usage_unique_values \
             WHERE tenant_id = ? AND customer_id = ?"
        ))
        .await?;
        let select_dedup = prepare(format!(
            "SELECT event_id FROM {ks}.usage_dedup WHERE tenant_id = ? AND customer_id = ?"
        ))
        .await?;
        let mut upsert_aggregate = prepare(format!(
            "INSERT INTO {ks}.usage_aggregates (tenant_id, customer_id, subscription_id, charge_id, period_start, \
             group_key, period_end, metric_code, aggregation, charge_model, charge_properties, currency, \
             events_count, sum, max, latest_ts, latest_event_id, latest_value, weighted_integral, last_partition, \
             last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await?;
        upsert_aggregate.set_is_idempotent(true);
        let mut insert_unique = prepare(format!(
            "INSERT INTO {ks}.usage_unique_values (tenant_id, customer_id, subscription_id, charge_id, \
             period_start, group_key, value) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
        insert_unique.set_is_idempotent(true);
        let mut insert_dedup = prepare(format!(
            "INSERT INTO {ks}.usage_dedup (tenant_id, customer_id, event_id) VALUES (?, ?, ?)"
        ))
        .await?;
        insert_dedup.set_is_idempotent(true);
        Ok(Store {
            session,
            ch,
            select_aggregates,
            select_unique,
            select_dedup,
            upsert_aggregate,
            insert_unique,
            insert_dedup,
        })
    }

    /// Load everything stored about a customer (paged reads), in the reverse of the order checkpoints write it.
    pub async fn load(&self, tenant: &str, customer: &str) -> anyhow::Result<CustomerUsage> {
        let mut usage = CustomerUsage::default();
        // Dedup ids first: a checkpoint writes aggregates before ids, so every id read here is already included in
        // the aggregates read next, even while another instance is still writing this customer's last checkpoint.
        let mut rows = self
            .session
            .execute_iter(self.select_dedup.clone(), (tenant, customer))
            .await?
            .rows_stream::<(String,)>()?;
        while let Some((event_id,)) = rows.try_next().await? {
            usage.seen.insert(event_id);
        }
        let mut rows = self
            .session
            .execute_iter(self.select_aggregates.clone(), (tenant, customer))
            .await?
            .rows_stream::<AggregateRow>()?;
        while let Some(r) = rows.try_next().await? {
            let (key, state) = r.into_state()?;
            usage.aggregates.insert(key, state);
        }
        let mut rows = self
            .session
            .execute_iter(self.select_unique.clone(), (tenant, customer))
            .await?
            .rows_stream::<(String, String, DateTime<Utc>, String, String)>()?;
        while let Some((subscription_id, charge_id, period_start, group_key, value)) =
            rows.try_next().await?
        {
            let key = AggKey {
                subscription_id,
                charge_id,
                period_start,
                group_key,
            };
            if let Some(state) = usage.aggregates.get_mut(&key) {
                state.running.unique.insert(value);
            }
        }
        Ok(usage)
    }

    /// Write aggregates as absolute values, stamped with their last offset, and their new unique values.
    pub async fn save_aggregates(
        &self,
        rows: Vec<(String, String, AggKey, AggState, Vec<String>)>,
    ) -> anyhow::Result<()> {
        futures::stream::iter(rows)
            .map(|(tenant, customer, k, s, new_unique)| async move {
                for value in &new_unique {
                    self.session
                        .execute_unpaged(
                            &self.insert_unique,
                            (
                                &tenant,
                                &customer,
                                &k.subscription_id,
                                &k.charge_id,
                                k.period_start,
                                &k.group_key,
                                value,
                            ),
                        )
                        .await?;
                }
                let r = &s.running;
                let latest = r.latest.as_ref();
                let row = AggWrite {
                    tenant_id: &tenant,
                    customer_id: &customer,
                    subscription_id: &k.subscription_id,
                    charge_id: &k.charge_id,
                    period_start: k.period_start,
                    group_key: &k.group_key,
                    period_end: s.period_end,
                    metric_code: &s.metric_code,
                    aggregation: &s.aggregation,
                    charge_model: &s.charge_model,
                    charge_properties: &s.charge_properties,
                    currency: &s.currency,
                    events_count: i64::try_from(r.events_count).unwrap_or(i64::MAX),
                    sum: to_cql_decimal(r.sum),
                    max: unset_if_none(r.max.map(to_cql_decimal)),
                    latest_ts: unset_if_none(latest.map(|l| l.timestamp)),
                    latest_event_id: unset_if_none(latest.map(|l| l.event_id.as_str())),
                    latest_value: unset_if_none(latest.map(|l| to_cql_decimal(l.value))),
                    weighted_integral: to_cql_decimal(r.weighted_integral),
                    last_partition: s.last_partition,
                    last_offset: s.last_offset,
                    write_timestamp: s.last_offset + 1,
                };
                self.session
                    .execute_unpaged(&self.upsert_aggregate, row)
                    .await?;
                anyhow::Ok(())
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Record counted event ids, one unlogged batch per customer (one partition each).
    pub async fn save_seen(
        &self,
        seen: Vec<((String, String), Vec<String>)>,
    ) -> anyhow::Result<()> {
        futures::stream::iter(seen)
            .map(|((tenant, customer), ids)| async move {
                for chunk in ids.chunks(200) {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    let mut values = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        batch.append_statement(self.insert_dedup.clone());
                        values.push((tenant.as_str(), customer.as_str(), id.as_str()));
                    }
                    self.session.batch(&batch, values).await?;
                }
                anyhow::Ok(())
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Insert accepted events into ClickHouse, in one INSERT.
    pub async fn insert_events(&self, rows: &[UsageEventRow]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.ch.insert::<UsageEventRow>("usage_events").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }
}
