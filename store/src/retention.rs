//! Data retention (`billing retention run`, and `billing ticker` every `retention.interval`): raw usage events in
//! ClickHouse are dropped a monthly partition at a time once the whole month is older than
//! `retention.usage_events`, and the audit log's once older than `retention.audit_log`; the dead-letter topics get `retention.ms`; the webhook delivery logs get their CQL
//! default TTL (rows written from then on). Invoices, invoice lines, credit notes, voids and every table billing
//! decides from are never touched: they are not in this module.

use billing_runtime::config::Settings;
use chrono::{DateTime, Datelike, Utc};

/// The ClickHouse tables retention drops partitions of (each partitioned by `toYYYYMM` of its event time), with
/// how long each is kept.
pub fn clickhouse_tables(
    r: &billing_runtime::config::RetentionConfig,
) -> [(&'static str, std::time::Duration); 2] {
    [("usage_events", r.usage_events), ("audit_log", r.audit_log)]
}
/// The CQL tables whose default TTL it sets.
pub const CQL_TABLES: &[&str] = &["webhook_deliveries", "webhook_deliveries_by_created"];

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// (table, partition) dropped.
    pub dropped: Vec<(String, u32)>,
    /// Topics whose retention was set.
    pub topics: Vec<String>,
    /// CQL tables whose default TTL was set.
    pub ttl_tables: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .map(|(t, p)| format!("{t} {p}"))
            .collect();
        write!(
            f,
            "partitions dropped: {}; retention.ms set on: {}; default TTL set on: {}",
            if dropped.is_empty() {
                "none".to_owned()
            } else {
                dropped.join(", ")
            },
            self.topics.join(", "),
            self.ttl_tables.join(", ")
        )
    }
}

/// The `YYYYMM` partitions wholly older than `cutoff`: every month before the one `cutoff` falls in.
pub fn expired_partitions(partitions: &[String], cutoff: DateTime<Utc>) -> Vec<u32> {
    let keep_from = cutoff.year() as u32 * 100 + cutoff.month();
    let mut out: Vec<u32> = partitions
        .iter()
        .filter_map(|p| p.trim_matches('\'').parse::<u32>().ok())
        .filter(|p| *p < keep_from)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Apply the retention settings at `now`.
pub async fn run(settings: &Settings, now: DateTime<Utc>) -> anyhow::Result<Report> {
    let r = &settings.retention;
    let mut report = Report::default();
    let ch = billing_runtime::clickhouse::client(&settings.clickhouse);
    let db = &settings.clickhouse.database;
    for (table, kept) in clickhouse_tables(r) {
        let cutoff = now - chrono::Duration::from_std(kept)?;
        let parts: Vec<String> = ch
            .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active")
            .bind(db)
            .bind(table)
            .fetch_all::<String>()
            .await?;
        for p in expired_partitions(&parts, cutoff) {
            ch.query(&format!("ALTER TABLE {db}.{table} DROP PARTITION {p}"))
                .execute()
                .await?;
            report.dropped.push((table.to_owned(), p));
        }
    }
    let topics = billing_runtime::kafka::Topics::new(&settings.kafka);
    let dlqs = vec![topics.usage_dlq.clone(), topics.lifecycle_dlq.clone()];
    billing_runtime::kafka::set_retention(&settings.kafka, &dlqs, r.dead_letters).await?;
    report.topics = dlqs;
    let session = billing_runtime::cql::connect(&settings.cassandra).await?;
    let ks = &settings.cassandra.keyspace;
    for table in CQL_TABLES {
        session
            .query_unpaged(
                format!(
                    "ALTER TABLE {ks}.{table} WITH default_time_to_live = {}",
                    r.webhook_deliveries.as_secs()
                ),
                (),
            )
            .await?;
        report.ttl_tables.push((*table).to_owned());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_months_wholly_before_the_cutoff_expire() {
        let parts: Vec<String> = ["202312", "202401", "'202402'", "202403", "not-a-month"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let cutoff: DateTime<Utc> = "2024-03-10T00:00:00Z".parse().unwrap();
        assert_eq!(
            expired_partitions(&parts, cutoff),
            vec![202312, 202401, 202402]
        );
        let first: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(expired_partitions(&parts, first), vec![202312]);
    }
}
