//! Every ScyllaDB and ClickHouse table of the pipeline, one module per table: where its DDL lives (the numbered
//! migrations under `store/migrations/`, applied by [`migrate`]), its row types and its statements. Each table
//! has exactly one writer service, named in its module's documentation and in [`TABLES`]; any service may read.
//!
//! Services use this crate instead of one another: rating writes the usage tables, query-api reads them, and the
//! invoicer and payments will add theirs here.

pub mod migrate;
pub mod usage;
pub mod usage_aggregates;
pub mod usage_dedup;
pub mod usage_events;
pub mod usage_unique_values;

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
    ("schema_migrations", Store::ClickHouse, "migrate"),
    ("usage_events", Store::ClickHouse, "rating"),
];

fn dec(d: Option<CqlDecimal>) -> anyhow::Result<Option<Decimal>> {
    d.map(|d| from_cql_decimal(&d).ok_or_else(|| anyhow::anyhow!("decimal out of range")))
        .transpose()
}
