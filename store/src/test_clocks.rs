//! ScyllaDB `test_clocks` (migration `cql/0002_billing.cql`): per test clock and lifecycle partition, the billing
//! time the invoicer has finished processing there (its bill run included). A clock is ready at T when every
//! partition has reached T.
//!
//! **Writer: invoicer.** Readers: query-api (clock status, advance waits).

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.test_clocks (tenant_id, clock_id, partition, now) VALUES (?, ?, ?, ?)"
    )
}

pub(crate) fn select_clock(ks: &str) -> String {
    format!("SELECT partition, now FROM {ks}.test_clocks WHERE tenant_id = ? AND clock_id = ?")
}
