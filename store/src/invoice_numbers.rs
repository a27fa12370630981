//! ScyllaDB `invoice_number_blocks` (migration `cql/0002_billing.cql`): gap-free invoice numbers.
//!
//! A scope (the tenant, or one customer) has a static counter `next`. Numbers are claimed a block at a time for an
//! ordered list of invoice ids: one conditional batch on the scope's partition moves `next` from N to N + k **if it
//! is still N** and records the block `N → [ids]` in the same write. Either both happen or neither, so a number
//! exists only together with the invoice it belongs to: no gap, no duplicate, whatever the number of invoicer
//! instances claiming at once (the loser of a race reads `next` again and retries). The invoice row is written
//! first; an invoice found without a number after a crash looks for its id in the blocks before claiming again.
//!
//! **Writer: invoicer.** Readers: invoicer.

/// The counter of a scope.
pub(crate) fn select_next(ks: &str) -> String {
    format!("SELECT next FROM {ks}.invoice_number_blocks WHERE tenant_id = ? AND scope = ? LIMIT 1")
}

/// Claim a block: moves `next` (condition bound as the old value) and records the block.
pub(crate) fn claim_batch(ks: &str) -> String {
    format!(
        "BEGIN BATCH \
         UPDATE {ks}.invoice_number_blocks SET next = ? WHERE tenant_id = ? AND scope = ? IF next = ?; \
         INSERT INTO {ks}.invoice_number_blocks (tenant_id, scope, first_number, invoice_ids) VALUES (?, ?, ?, ?); \
         APPLY BATCH"
    )
}

/// Every block of a scope, newest first.
pub(crate) fn select_blocks(ks: &str) -> String {
    format!(
        "SELECT first_number, invoice_ids FROM {ks}.invoice_number_blocks WHERE tenant_id = ? AND scope = ?"
    )
}

/// The text of number `n`: `<prefix>-<n, zero-padded to width>`.
pub fn format_number(prefix: &str, width: usize, n: i64) -> String {
    format!("{prefix}-{n:0width$}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_padded() {
        assert_eq!(super::format_number("ACME", 6, 123), "ACME-000123");
        assert_eq!(super::format_number("A", 2, 1234), "A-1234");
    }
}
