//! ClickHouse `usage_events` (migration `clickhouse/0001_usage_events.sql`): every accepted usage event with its
//! rated amount, for analysts. A `ReplacingMergeTree` keyed by (tenant, customer, event id): a replay after a crash
//! may insert an event again, and reports read it with `FINAL` or `uniqExact(event_id)`.
//!
//! **Writer: rating.** Readers: analysts' SQL.

use serde::Serialize;

/// The table's name.
pub const TABLE: &str = "usage_events";

/// A row; field order is the table's column order.
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

/// Insert rows in one INSERT.
pub async fn insert(ch: &clickhouse::Client, rows: &[UsageEventRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = ch.insert::<UsageEventRow>(TABLE).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}
