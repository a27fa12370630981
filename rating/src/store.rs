//! The tables rating owns: `usage_totals` in ScyllaDB and `usage_events` in ClickHouse.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlDecimal;
use serde::Serialize;

use billing_runtime::cql::{from_cql_decimal, to_cql_decimal};

/// Identifies one usage total.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TotalKey {
    /// Tenant.
    pub tenant_id: String,
    /// Customer.
    pub customer_id: String,
    /// Metric.
    pub metric_code: String,
    /// Start of the UTC calendar month.
    pub period_start: DateTime<Utc>,
}

/// One usage total and the last event offset it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    /// Events counted.
    pub event_count: i64,
    /// Sum of their values.
    pub value_sum: Decimal,
    /// Kafka partition of the customer.
    pub last_partition: i32,
    /// Offset of the last event included.
    pub last_offset: i64,
}

/// A row of ClickHouse `usage_events`; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct UsageEventRow {
    pub tenant_id: String,
    pub event_id: String,
    pub customer_id: String,
    pub metric_code: String,
    /// Event time, epoch seconds.
    pub timestamp: u32,
    /// Kafka append time, epoch seconds.
    pub ingested_at: u32,
    /// Decimal(38, 9).
    pub value: i128,
    /// JSON object text.
    pub properties: String,
    pub kafka_partition: u16,
    pub kafka_offset: u64,
}

/// Prepared statements and clients.
pub struct Store {
    session: Arc<Session>,
    ch: clickhouse::Client,
    select_total: PreparedStatement,
    upsert_total: PreparedStatement,
}

/// How many CQL writes a checkpoint keeps in flight.
const WRITE_CONCURRENCY: usize = 128;

impl Store {
    /// Prepare every statement once.
    pub async fn new(
        session: Arc<Session>,
        ch: clickhouse::Client,
        keyspace: &str,
    ) -> anyhow::Result<Self> {
        let select_total = session
            .prepare(format!(
                "SELECT event_count, value_sum, last_partition, last_offset FROM {keyspace}.usage_totals \
                 WHERE tenant_id = ? AND customer_id = ? AND metric_code = ? AND period_start = ?"
            ))
            .await?;
        let mut upsert_total = session
            .prepare(format!(
                "INSERT INTO {keyspace}.usage_totals (tenant_id, customer_id, metric_code, period_start, \
                 event_count, value_sum, last_partition, last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?;
        upsert_total.set_is_idempotent(true);
        Ok(Store {
            session,
            ch,
            select_total,
            upsert_total,
        })
    }

    /// The stored total for a key, if any.
    pub async fn load(&self, key: &TotalKey) -> anyhow::Result<Option<Total>> {
        let rows = self
            .session
            .execute_unpaged(
                &self.select_total,
                (
                    &key.tenant_id,
                    &key.customer_id,
                    &key.metric_code,
                    key.period_start,
                ),
            )
            .await?
            .into_rows_result()?;
        let Some((event_count, value_sum, last_partition, last_offset)) =
            rows.maybe_first_row::<(i64, CqlDecimal, i32, i64)>()?
        else {
            return Ok(None);
        };
        let value_sum = from_cql_decimal(&value_sum)
            .ok_or_else(|| anyhow::anyhow!("value_sum out of range"))?;
        Ok(Some(Total {
            event_count,
            value_sum,
            last_partition,
            last_offset,
        }))
    }

    /// Write totals as absolute values. Each write is stamped with its last offset, so replays are harmless.
    pub async fn save(&self, totals: Vec<(TotalKey, Total)>) -> anyhow::Result<()> {
        futures::stream::iter(totals)
            .map(|(k, t)| async move {
                self.session
                    .execute_unpaged(
                        &self.upsert_total,
                        (
                            &k.tenant_id,
                            &k.customer_id,
                            &k.metric_code,
                            k.period_start,
                            t.event_count,
                            to_cql_decimal(t.value_sum),
                            t.last_partition,
                            t.last_offset,
                            t.last_offset + 1,
                        ),
                    )
                    .await
                    .map(|_| ())
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
