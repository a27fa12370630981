//! ScyllaDB `catalog_entries` (migration `cql/0002_billing.cql`): the latest version of every billable metric,
//! plan, tax rate, coupon and add-on, as published on `billing.catalog`.
//!
//! **Writer: invoicer.** Readers: query-api (catalog reads and request validation).

/// Kind of a billable metric entry.
pub const METRIC: &str = "billable_metric";
/// Kind of a plan entry.
pub const PLAN: &str = "plan";
/// Kind of a tax rate entry.
pub const TAX_RATE: &str = "tax_rate";
/// Kind of a coupon entry.
pub const COUPON: &str = "coupon";
/// Kind of an add-on entry.
pub const ADD_ON: &str = "add_on";

pub(crate) fn upsert(ks: &str) -> String {
    format!("INSERT INTO {ks}.catalog_entries (tenant_id, kind, code, created_at, body) VALUES (?, ?, ?, ?, ?)")
}

pub(crate) fn delete(ks: &str) -> String {
    format!("DELETE FROM {ks}.catalog_entries WHERE tenant_id = ? AND kind = ? AND code = ?")
}

pub(crate) fn select_one(ks: &str) -> String {
    format!(
        "SELECT created_at, body FROM {ks}.catalog_entries WHERE tenant_id = ? AND kind = ? AND code = ?"
    )
}

pub(crate) fn select_kind(ks: &str) -> String {
    format!(
        "SELECT code, created_at, body FROM {ks}.catalog_entries WHERE tenant_id = ? AND kind = ?"
    )
}
