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

/// Rows already encoded for one INSERT, in ClickHouse's `RowBinary` format and [`COLUMNS`]' order, as they are rated
/// (nothing allocated per row is kept, and writing them needs no serialization): in chunks of [`ROWS_CHUNK`] bytes (a row never
/// straddles two), so a checkpoint's rows grow without copying what is already encoded, and the chunks stay allocated
/// when cleared, for the next checkpoint. (A single vector doubled as it grew: rating's profile showed the copies and
/// the fresh pages they touched, the kernel zeroing them, at 8 % of its loop.)
#[derive(Debug, Default)]
pub struct EncodedRows {
    chunks: Vec<Vec<u8>>,
    /// The chunk being filled (those before it are full, those after it empty).
    current: usize,
    rows: usize,
    bytes: usize,
}

/// The size of one chunk of [`EncodedRows`] (a larger row gets a chunk of its own size).
pub const ROWS_CHUNK: usize = 1 << 20;

impl EncodedRows {
    /// Append a row.
    pub fn push(&mut self, row: &UsageEventRow) {
        let strings = [
            &row.tenant_id,
            &row.event_id,
            &row.customer_id,
            &row.subscription_id,
            &row.metric_code,
            &row.currency,
            &row.properties,
        ];
        // Fixed-size columns: two u32, two i128, a u16, a u64, a u8.
        const FIXED: usize = 4 + 4 + 16 + 16 + 2 + 8 + 1;
        let size = FIXED
            + strings
                .iter()
                .map(|s| varint_len(s.len()) + s.len())
                .sum::<usize>();
        let b = self.room(size);
        for s in &strings[..5] {
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
        self.bytes += size;
    }

    /// A chunk with room for `size` more bytes: the current one, else the next (allocated if none is left).
    fn room(&mut self, size: usize) -> &mut Vec<u8> {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(ROWS_CHUNK.max(size)));
        }
        let chunk = &self.chunks[self.current];
        if chunk.capacity() - chunk.len() < size {
            self.current += 1;
            match self.chunks.get_mut(self.current) {
                Some(next) if next.capacity() >= size => {}
                Some(next) => next.reserve_exact(size),
                None => self.chunks.push(Vec::with_capacity(ROWS_CHUNK.max(size))),
            }
        }
        &mut self.chunks[self.current]
    }

    /// The encoded rows, chunk by chunk, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks
            .iter()
            .take(self.current + 1)
            .map(Vec::as_slice)
            .filter(|c| !c.is_empty())
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
        self.bytes
    }

    /// Forget the rows, keeping the chunks.
    pub fn clear(&mut self) {
        for chunk in &mut self.chunks {
            chunk.clear();
        }
        self.current = 0;
        self.rows = 0;
        self.bytes = 0;
    }
}

/// The bytes of a RowBinary string length (unsigned LEB128).
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

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
    for chunk in rows.chunks() {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = insert.write(rest).await?;
            rest = &rest[n..];
        }
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
        assert_eq!(rows.chunks().collect::<Vec<_>>(), vec![want.as_slice()]);
        assert_eq!((rows.len(), rows.bytes()), (1, want.len()));
        assert_eq!(COLUMNS.split(',').count(), 14);
        rows.clear();
        assert!(rows.is_empty() && rows.bytes() == 0 && rows.chunks().next().is_none());
    }

    #[test]
    fn rows_fill_chunks_whole_and_reuse_them_once_cleared() {
        let row = |event_id: String, properties: String| UsageEventRow {
            tenant_id: "t".into(),
            event_id,
            customer_id: "c".into(),
            subscription_id: "s".into(),
            metric_code: "m".into(),
            timestamp: 1,
            ingested_at: 2,
            value: 3,
            amount: 4,
            currency: "EUR".into(),
            properties,
            kafka_partition: 5,
            kafka_offset: 6,
            unpriced: 0,
        };
        let encoded = |r: &UsageEventRow| {
            let mut one = EncodedRows::default();
            one.push(r);
            one.chunks().flatten().copied().collect::<Vec<u8>>()
        };
        // Rows of about 100 KiB: ten fit in a chunk, the eleventh starts the next one. A row larger than a chunk
        // gets one of its own size.
        let mut all = Vec::new();
        let mut rows = EncodedRows::default();
        for round in 0..2 {
            all.clear();
            for i in 0..25 {
                let r = row(format!("e{i}"), "x".repeat(100 << 10));
                all.extend(encoded(&r));
                rows.push(&r);
            }
            let big = row("big".into(), "y".repeat(ROWS_CHUNK + 1));
            all.extend(encoded(&big));
            rows.push(&big);
            let chunks: Vec<&[u8]> = rows.chunks().collect();
            assert_eq!(chunks.len(), 4, "round {round}");
            assert!(chunks
                .iter()
                .all(|c| !c.is_empty() && c.len() <= ROWS_CHUNK + 1 + 100));
            assert_eq!(chunks.concat(), all, "round {round}");
            assert_eq!((rows.len(), rows.bytes()), (26, all.len()));
            rows.clear();
            assert!(rows.is_empty() && rows.chunks().next().is_none());
        }
        // Cleared chunks were reused, not added to.
        assert_eq!(rows.chunks.len(), 4);
    }
}
