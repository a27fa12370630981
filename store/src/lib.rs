//! Every ScyllaDB and ClickHouse table of the pipeline, one module per table: where its DDL lives (the numbered
//! migrations under `store/migrations/`, applied by [`migrate`]), its row types and its statements. Each table
//! has exactly one writer service, named in its module's documentation and in [`TABLES`]; any service may read.
//!
//! Services use this crate instead of one another: rating writes the usage tables; the invoicer writes the billing
//! read models (customers, subscriptions, catalog, test clocks, invoices and their numbers); query-api reads both
//! and writes only its idempotency keys, the webhook endpoints and redeliver requests; the webhooks service writes
//! the webhook deliveries.

pub mod analytics;
pub mod api_idempotency;
pub mod api_keys;
pub mod audit_log;
pub mod billing;
pub mod catalog_entries;
pub mod credit_notes;
pub mod customers;
pub mod invoice_facts;
pub mod invoice_numbers;
pub mod invoices;
pub mod late_usage;
pub mod materialized_offsets;
pub mod migrate;
pub mod payments;
pub mod reference_snapshots;
pub mod retention;
pub mod sandbox_ledger;
pub mod subscriptions;
pub mod test_clocks;
pub mod usage;
pub mod usage_aggregates;
pub mod usage_dedup;
pub mod usage_events;
pub mod usage_unique_values;
pub mod webhook_deliveries;
pub mod webhook_endpoints;
pub mod webhook_redeliveries;

use billing_runtime::cql::from_cql_decimal;
use rust_decimal::Decimal;
use scylla::value::CqlDecimal;

/// Which store holds a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// ScyllaDB (Cassandra locally).
    Cql,
    /// ClickHouse.
    ClickHouse,
}

/// Every table, its store and the one service that writes it (`migrate` for the migrations' own bookkeeping).
pub const TABLES: &[(&str, Store, &str)] = &[
    ("schema_migrations", Store::Cql, "migrate"),
    ("usage_aggregates", Store::Cql, "rating"),
    ("usage_unique_values", Store::Cql, "rating"),
    ("usage_dedup", Store::Cql, "rating"),
    ("usage_dedup_blocks", Store::Cql, "rating"),
    ("reference_snapshots", Store::Cql, "rating"),
    ("reference_snapshot_chunks", Store::Cql, "rating"),
    ("customers", Store::Cql, "invoicer"),
    ("customers_by_created", Store::Cql, "invoicer"),
    ("subscriptions", Store::Cql, "invoicer"),
    ("subscriptions_by_customer", Store::Cql, "invoicer"),
    ("catalog_entries", Store::Cql, "invoicer"),
    ("test_clocks", Store::Cql, "invoicer"),
    ("invoices", Store::Cql, "invoicer"),
    ("invoices_by_customer", Store::Cql, "invoicer"),
    ("invoices_by_date", Store::Cql, "invoicer"),
    ("invoice_number_blocks", Store::Cql, "invoicer"),
    ("materialized_offsets", Store::Cql, "invoicer"),
    ("api_idempotency", Store::Cql, "query-api"),
    ("payment_methods", Store::Cql, "invoicer"),
    ("invoice_payments", Store::Cql, "invoicer"),
    ("credit_notes", Store::Cql, "invoicer"),
    ("credit_notes_by_invoice", Store::Cql, "invoicer"),
    ("payment_attempts", Store::Cql, "payments"),
    ("sandbox_ledger", Store::Cql, "payments"),
    ("sandbox_ledger_calls", Store::Cql, "payments"),
    ("webhook_endpoints", Store::Cql, "query-api"),
    ("webhook_redeliveries", Store::Cql, "query-api"),
    ("webhook_deliveries", Store::Cql, "webhooks"),
    ("tenants", Store::Cql, "cli"),
    ("api_keys", Store::Cql, "query-api"),
    ("api_keys_by_tenant", Store::Cql, "cli"),
    ("webhook_deliveries_by_created", Store::Cql, "webhooks"),
    ("webhook_pending", Store::Cql, "webhooks"),
    ("schema_migrations", Store::ClickHouse, "migrate"),
    ("usage_events", Store::ClickHouse, "rating"),
    ("invoices", Store::ClickHouse, "invoicer"),
    ("invoice_lines", Store::ClickHouse, "invoicer"),
    ("credit_notes", Store::ClickHouse, "invoicer"),
    ("credit_note_lines", Store::ClickHouse, "invoicer"),
    ("invoice_line_taxes", Store::ClickHouse, "invoicer"),
    ("invoice_voids", Store::ClickHouse, "invoicer"),
    ("audit_log", Store::ClickHouse, "query-api"),
    ("subscription_mrr", Store::ClickHouse, "invoicer"),
    ("payments", Store::ClickHouse, "invoicer"),
];

/// Prepare a statement once, marked idempotent (safe for the driver to retry) or not. The serial consistency is
/// the one lightweight transactions of this crate use; it does not affect other statements.
pub(crate) async fn prepare(
    session: &scylla::client::session::Session,
    query: String,
    idempotent: bool,
) -> anyhow::Result<scylla::statement::prepared::PreparedStatement> {
    let mut p = session.prepare(query).await?;
    p.set_is_idempotent(idempotent);
    p.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
    Ok(p)
}

/// The `[applied]` flag a lightweight transaction answers with (its first column; the others, present when it
/// did not apply, are the current values).
pub(crate) fn lwt_applied(
    result: &scylla::response::query_result::QueryRowsResult,
) -> anyhow::Result<bool> {
    let row = result
        .rows::<scylla::value::Row>()?
        .next()
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("a lightweight transaction answered no row"))?;
    match row.columns.first() {
        Some(Some(scylla::value::CqlValue::Boolean(b))) => Ok(*b),
        other => anyhow::bail!("unexpected [applied] column {other:?}"),
    }
}

fn dec(d: Option<CqlDecimal>) -> anyhow::Result<Option<Decimal>> {
    d.map(|d| from_cql_decimal(&d).ok_or_else(|| anyhow::anyhow!("decimal out of range")))
        .transpose()
}
