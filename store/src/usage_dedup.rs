//! ScyllaDB `usage_dedup` (migration `cql/0001_usage.cql`): event ids already counted, per customer, kept 40 days
//! by the table's default TTL (the dedup window is at least 35 days).
//!
//! **Writer: rating.** Reader: rating (on load).

/// Every counted event id of one customer.
pub fn select_by_customer(ks: &str) -> String {
    format!("SELECT event_id FROM {ks}.usage_dedup WHERE tenant_id = ? AND customer_id = ?")
}

/// Record one counted id.
pub fn insert(ks: &str) -> String {
    format!("INSERT INTO {ks}.usage_dedup (tenant_id, customer_id, event_id) VALUES (?, ?, ?)")
}
