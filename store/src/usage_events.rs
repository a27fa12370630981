//! ClickHouse `usage_events` (migration `clickhouse/0001_usage_events.sql`): every accepted usage event with its
//! rated amount, for analysts. A `ReplacingMergeTree` keyed by (tenant, customer, event id): a replay after a crash
//! may insert an event again, and reports read it with `FINAL` or `uniqExact(event_id)`.
//!
//! **Writer: rating.** Readers: analysts' SQL.

/// The table's name.
pub const TABLE: &str = "usage_events";

/// A row; field order is the table's column order (the order [`EncodedRows`] writes).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct UsageEventRow {
    pub tenant_id: String,
    pub event_id: String,
    pub customer_id: String,
    pub subscription_id: String,
    pub metric_code: String,
    /// Event time, epoch seconds.
    pub timestamp: u32,
    /// Kafka append time, epoch seconds.
    pub ingested_at: u32,
    /// Decimal(38, 9).
    pub value: i128,
    /// Rated amount, Decimal(38, 9).
    pub amount: i128,
    pub currency: String,
    /// JSON object text.
    pub properties: String,
    pub kafka_partition: u16,
    pub kafka_offset: u64,
    /// 1 when a charge the event counts for cannot be priced from running usage: `amount` leaves it out (the
    /// invoice prices it from the events).
    pub unpriced: u8,
}

/// The table's columns, in [`UsageEventRow`]'s order (the order [`EncodedRows`] writes them in).
const COLUMNS: &str =
    "tenant_id, event_id, customer_id, subscription_id, metric_code, timestamp, ingested_at, \
    value, amount, currency, properties, kafka_partition, kafka_offset, unpriced";

/// Rows already encoded for one INSERT, in ClickHouse's `RowBinary` format and [`COLUMNS`]' order: a checkpoint's
/// rows fill one contiguous buffer as they are rated (nothing allocated per row is kept, and a reused buffer stops
/// growing), and writing them needs no serialization.
#[derive(Debug, Default)]
pub struct EncodedRows {
    bytes: Vec<u8>,
    rows: usize,
}

impl EncodedRows {
    /// Append a row.
    pub fn push(&mut self, row: &UsageEventRow) {
        let b = &mut self.bytes;
        for s in [
            &row.tenant_id,
            &row.event_id,
            &row.customer_id,
            &row.subscription_id,
            &row.metric_code,
        ] {
            put_string(b, s);
        }
        b.extend_from_slice(&row.timestamp.to_le_bytes());
        b.extend_from_slice(&row.ingested_at.to_le_bytes());
        b.extend_from_slice(&row.value.to_le_bytes());
        b.extend_from_slice(&row.amount.to_le_bytes());
        put_string(b, &row.currency);
        put_string(b, &row.properties);
        b.extend_from_slice(&row.kafka_partition.to_le_bytes());
        b.extend_from_slice(&row.kafka_offset.to_le_bytes());
        b.push(row.unpriced);
        self.rows += 1;
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Forget the rows, keeping the buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows = 0;
    }

    /// Room for `bytes` more bytes at once.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }
}

/// A `String` in `RowBinary`: its length as an unsigned LEB128 varint, then its bytes.
fn put_string(b: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        b.push((n as u8) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    b.extend_from_slice(s.as_bytes());
}

/// Insert encoded rows in one INSERT (the table's one writer path).
pub async fn insert_encoded(ch: &clickhouse::Client, rows: &EncodedRows) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = ch
        .insert_formatted_with(format!("INSERT INTO {TABLE} ({COLUMNS}) FORMAT RowBinary"))
        .buffered();
    let mut rest = rows.bytes.as_slice();
    while !rest.is_empty() {
        let n = insert.write(rest).await?;
        rest = &rest[n..];
    }
    insert.end().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_encoded_in_column_order_with_varint_lengths() {
        let row = UsageEventRow {
            tenant_id: "t".into(),
            event_id: "e".repeat(200),
            customer_id: String::new(),
            subscription_id: "s".into(),
            metric_code: "m".into(),
            timestamp: 0x0102_0304,
            ingested_at: 5,
            value: -1,
            amount: 1_500_000_000,
            currency: "EUR".into(),
            properties: "{}".into(),
            kafka_partition: 7,
            kafka_offset: 9,
            unpriced: 1,
        };
        let mut rows = EncodedRows::default();
        rows.push(&row);
        let mut want = vec![1, b't', 200, 1];
        want.extend(std::iter::repeat_n(b'e', 200));
        want.extend([0, 1, b's', 1, b'm', 4, 3, 2, 1, 5, 0, 0, 0]);
        want.extend([0xff; 16]);
        want.extend(1_500_000_000i128.to_le_bytes());
        want.extend([3, b'E', b'U', b'R', 2, b'{', b'}', 7, 0]);
        want.extend(9u64.to_le_bytes());
        want.push(1);
        assert_eq!(rows.bytes, want);
        assert_eq!((rows.len(), rows.bytes()), (1, want.len()));
        assert_eq!(COLUMNS.split(',').count(), 14);
        rows.clear();
        assert!(rows.is_empty() && rows.bytes() == 0);
    }
}
