//! ScyllaDB `materialized_offsets` (migration `cql/0002_billing.cql`): per topic partition, the first offset whose
//! effect the invoicer has not yet written to the read models. An API write waits until its event's offset is
//! below it (read-your-writes).
//!
//! **Writer: invoicer.** Readers: query-api.

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.materialized_offsets (topic, partition, next_offset) VALUES (?, ?, ?)"
    )
}

pub(crate) fn select_one(ks: &str) -> String {
    format!("SELECT next_offset FROM {ks}.materialized_offsets WHERE topic = ? AND partition = ?")
}
