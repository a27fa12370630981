//! ScyllaDB `api_idempotency` (migration `cql/0002_billing.cql`): the answer given to a POST with an
//! `Idempotency-Key`, kept 24 hours (Stripe's window). The key is claimed with a lightweight transaction before the
//! request runs, so two concurrent requests with one key never both publish.
//!
//! **Writer: query-api.** Readers: query-api.

pub(crate) fn claim(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.api_idempotency (tenant_id, key, request_hash, status, body) VALUES (?, ?, ?, 0, '') IF NOT EXISTS"
    )
}

pub(crate) fn complete(ks: &str) -> String {
    format!("UPDATE {ks}.api_idempotency SET status = ?, body = ? WHERE tenant_id = ? AND key = ?")
}

pub(crate) fn release(ks: &str) -> String {
    format!("DELETE FROM {ks}.api_idempotency WHERE tenant_id = ? AND key = ?")
}

pub(crate) fn select_one(ks: &str) -> String {
    format!(
        "SELECT request_hash, status, body FROM {ks}.api_idempotency WHERE tenant_id = ? AND key = ?"
    )
}
