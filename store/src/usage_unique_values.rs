//! ScyllaDB `usage_unique_values` (migration `cql/0001_usage.cql`): the distinct values of unique-count
//! aggregates, one row each. Insert-only, so a replay is harmless.
//!
//! **Writer: rating.** Readers: rating (on load), query-api.

/// The columns a read returns: `(customer_id, subscription_id, charge_id, period_start, group_key, value)`.
const COLUMNS: &str = "customer_id, subscription_id, charge_id, period_start, group_key, value";

/// Every distinct value of one customer.
pub fn select_by_customer(ks: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {ks}.usage_unique_values WHERE tenant_id = ? AND customer_id = ?"
    )
}

/// Every distinct value of some customers of one tenant (`customer_id IN ?`).
pub fn select_by_customers(ks: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {ks}.usage_unique_values WHERE tenant_id = ? AND customer_id IN ?"
    )
}

/// Record one value.
pub fn insert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.usage_unique_values (tenant_id, customer_id, subscription_id, charge_id, \
         period_start, group_key, value) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
}
