//! ScyllaDB `usage_aggregates` (migration `cql/0001_usage.cql`): one row per (customer, subscription, charge,
//! billing period, group) holding the running aggregate as absolute values.
//!
//! **Writer: rating.** Readers: rating (on load), query-api (the usage API) and, later, the invoicer. Every write
//! carries `USING TIMESTAMP last_offset + 1`, so a stale writer (an old owner after a rebalance) never overwrites
//! newer state. The charge's model, properties and currency are copied in, so a reader prices usage without the
//! catalog.

use billing_core::aggregation::{AggregationType, Latest, RunningAggregate};
use billing_runtime::cql::to_cql_decimal;
use chrono::{DateTime, Utc};
use scylla::value::{CqlDecimal, MaybeUnset};

use crate::dec;

/// Identifies one aggregate within a customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    /// Subscription.
    pub subscription_id: String,
    /// Charge.
    pub charge_id: String,
    /// Billing period start.
    pub period_start: DateTime<Utc>,
    /// Value of the charge's group_by property ("" without grouping).
    pub group_key: String,
}

/// An [`AggKey`] of borrowed parts, to find an aggregate without building its key (rating looks aggregates up per
/// event). It hashes as the key it names: the derived `Hash` of each takes the same fields in the same order, and a
/// `&str` hashes as the `String` it borrows from.
#[derive(Debug, Clone, Copy, Hash)]
pub struct AggKeyRef<'a> {
    /// Subscription.
    pub subscription_id: &'a str,
    /// Charge.
    pub charge_id: &'a str,
    /// Billing period start.
    pub period_start: DateTime<Utc>,
    /// Value of the charge's group_by property ("" without grouping).
    pub group_key: &'a str,
}

impl AggKeyRef<'_> {
    /// The key it names, owned.
    pub fn to_owned(&self) -> AggKey {
        AggKey {
            subscription_id: self.subscription_id.to_owned(),
            charge_id: self.charge_id.to_owned(),
            period_start: self.period_start,
            group_key: self.group_key.to_owned(),
        }
    }
}

impl indexmap::Equivalent<AggKey> for AggKeyRef<'_> {
    fn equivalent(&self, key: &AggKey) -> bool {
        self.period_start == key.period_start
            && self.charge_id == key.charge_id
            && self.group_key == key.group_key
            && self.subscription_id == key.subscription_id
    }
}

/// A customer's aggregates, in the order they were added: rating refers to one by its index in here between an event
/// and the checkpoint that writes it (no key copied or hashed again per event). Aggregates are never removed from a
/// customer's map, so an index stays valid as long as the map. hashbrown's default hasher (foldhash) rather than
/// SipHash, which rating's profile showed among its top costs.
pub type Aggregates = indexmap::IndexMap<AggKey, AggState, hashbrown::DefaultHashBuilder>;

/// One aggregate, its pricing context, and the last event offset it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggState {
    /// Period end.
    pub period_end: DateTime<Utc>,
    /// Metric code.
    pub metric_code: String,
    /// Core aggregation name (e.g. `sum_agg`).
    pub aggregation: String,
    /// Lago charge model name.
    pub charge_model: String,
    /// Lago charge properties, JSON.
    pub charge_properties: String,
    /// ISO currency.
    pub currency: String,
    /// The running aggregate.
    pub running: RunningAggregate,
    /// Kafka partition of the customer.
    pub last_partition: i32,
    /// Offset of the last event included.
    pub last_offset: i64,
}

impl AggState {
    /// A copy without the unique values (a write of the aggregate does not need them: they are written on their
    /// own as they are added), so that a checkpoint does not copy sets that only grow.
    pub fn without_unique(&self) -> AggState {
        let r = &self.running;
        AggState {
            period_end: self.period_end,
            metric_code: self.metric_code.clone(),
            aggregation: self.aggregation.clone(),
            charge_model: self.charge_model.clone(),
            charge_properties: self.charge_properties.clone(),
            currency: self.currency.clone(),
            running: RunningAggregate {
                events_count: r.events_count,
                sum: r.sum,
                max: r.max,
                latest: r.latest.clone(),
                unique: Default::default(),
                weighted_integral: r.weighted_integral,
            },
            last_partition: self.last_partition,
            last_offset: self.last_offset,
        }
    }

    /// The core aggregation type this row was created with.
    pub fn aggregation_type(&self) -> anyhow::Result<AggregationType> {
        Ok(serde_json::from_value(serde_json::Value::String(
            self.aggregation.clone(),
        ))?)
    }
}

/// The stored name of an aggregation (its serde name, which [`AggState::aggregation_type`] reads back).
pub fn aggregation_name(a: AggregationType) -> &'static str {
    match a {
        AggregationType::CountAgg => "count_agg",
        AggregationType::SumAgg => "sum_agg",
        AggregationType::MaxAgg => "max_agg",
        AggregationType::UniqueCountAgg => "unique_count_agg",
        AggregationType::LatestAgg => "latest_agg",
        AggregationType::WeightedSumAgg => "weighted_sum_agg",
    }
}

/// The columns [`AggregateRow`] reads, in its order.
pub const COLUMNS: &str = "subscription_id, charge_id, period_start, group_key, period_end, metric_code, \
    aggregation, charge_model, charge_properties, currency, events_count, sum, max, latest_ts, latest_event_id, \
    latest_value, weighted_integral, last_partition, last_offset";

/// The `subscription_id` of a customer's dedup blocks, which share its partition (migration
/// `cql/0013_usage_dedup_in_aggregates.cql`): no aggregate has an empty subscription id, and it sorts first.
pub const BLOCK_SUBSCRIPTION: &str = "";

/// The columns of a dedup block row (besides its key).
const BLOCK_COLUMNS: &str = "dedup_ids, dedup_written_at";

/// Every aggregate of one customer (not its dedup blocks), each row with the customer's [`AppliedWindow`] (static
/// columns).
pub fn select_by_customer(ks: &str) -> String {
    format!(
        "SELECT customer_id, {COLUMNS}, {WINDOW_COLUMNS}, {BLOCK_COLUMNS} FROM {ks}.usage_aggregates \
         WHERE tenant_id = ? AND customer_id = ? AND subscription_id > ''"
    )
}

/// Every row of some customers of one tenant (`customer_id IN ?`): their aggregates with their applied window and
/// their dedup blocks (rows whose subscription id is [`BLOCK_SUBSCRIPTION`]), as one read sees them.
pub fn select_state_by_customers(ks: &str) -> String {
    format!(
        "SELECT customer_id, {COLUMNS}, {WINDOW_COLUMNS}, {BLOCK_COLUMNS} FROM {ks}.usage_aggregates \
         WHERE tenant_id = ? AND customer_id IN ?"
    )
}

/// Write one dedup block of a customer (a row of its partition, 40 days), bound with `(tenant, customer, block
/// id, ids, written at)`.
pub fn insert_block(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.usage_aggregates (tenant_id, customer_id, subscription_id, charge_id, period_start, \
         group_key, {BLOCK_COLUMNS}) VALUES (?, ?, '{BLOCK_SUBSCRIPTION}', ?, 0, '', ?, ?) \
         USING TTL {}",
        crate::usage_dedup::RETENTION_DAYS * 86_400
    )
}

/// The static columns of [`AppliedWindow`] (migration `cql/0012_usage_applied_window.cql`).
const WINDOW_COLUMNS: &str = "window_partition, window_from, window_to, window_rejected";

/// Write a customer's [`AppliedWindow`], bound with [`WindowWrite`].
pub fn update_window(ks: &str) -> String {
    format!(
        "UPDATE {ks}.usage_aggregates USING TIMESTAMP ? SET window_partition = ?, window_from = ?, \
         window_to = ?, window_rejected = ? WHERE tenant_id = ? AND customer_id = ?"
    )
}

/// The offsets of one customer's events that its last checkpoint covered, in its one usage partition: each event
/// from `from` (the first the checkpoint read) to `to` (the last it applied to an aggregate) was applied, except the
/// `rejected` ones. It is written in the same single-partition batch as the customer's aggregates (the last one
/// when there are several), so it is durable exactly when they are, while the checkpoint's dedup ids come after
/// them. A replay after a crash therefore knows an event inside it was counted even when its id was lost, and skips
/// it however the reference data attributes it now (a timezone or a backdated plan change would otherwise move it
/// to another aggregate, whose own offset guard does not know it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedWindow {
    /// The customer's usage partition.
    pub partition: i32,
    /// First offset of the customer read by the checkpoint.
    pub from: i64,
    /// Last offset of the customer applied by the checkpoint.
    pub to: i64,
    /// Offsets between them that were rejected (dead-lettered), ascending.
    pub rejected: Vec<i64>,
}

impl AppliedWindow {
    /// Whether the event at `offset` of `partition` was applied by the checkpoint.
    pub fn applied(&self, partition: i32, offset: i64) -> bool {
        partition == self.partition
            && (self.from..=self.to).contains(&offset)
            && self.rejected.binary_search(&offset).is_err()
    }

    fn encode_rejected(&self) -> Vec<u8> {
        self.rejected.iter().flat_map(|o| o.to_be_bytes()).collect()
    }

    fn decode_rejected(bytes: &[u8]) -> anyhow::Result<Vec<i64>> {
        anyhow::ensure!(
            bytes.len().is_multiple_of(8),
            "window_rejected: {} bytes is not a list of offsets",
            bytes.len()
        );
        let mut out: Vec<i64> = bytes
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        out.sort_unstable();
        Ok(out)
    }
}

/// The bound values of [`update_window`], in statement order.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct WindowWrite<'a> {
    write_timestamp: i64,
    partition: i32,
    from: i64,
    to: i64,
    rejected: Vec<u8>,
    tenant_id: &'a str,
    customer_id: &'a str,
}

impl<'a> WindowWrite<'a> {
    /// The values that store `window` for the customer, stamped with its last offset (like its aggregates).
    pub fn new(tenant: &'a str, customer: &'a str, window: &AppliedWindow) -> Self {
        WindowWrite {
            write_timestamp: window.to + 1,
            partition: window.partition,
            from: window.from,
            to: window.to,
            rejected: window.encode_rejected(),
            tenant_id: tenant,
            customer_id: customer,
        }
    }
}

/// Write one aggregate, bound with [`AggWrite`].
pub fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.usage_aggregates (tenant_id, customer_id, {COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
}

/// One row as stored: an aggregate (decode it with [`AggregateRow::into_state`]) or a dedup block (see
/// [`AggregateRow::block`]), whose aggregate columns are null (read as their defaults).
#[derive(scylla::DeserializeRow)]
#[allow(missing_docs)]
pub struct AggregateRow {
    pub customer_id: String,
    // Null only in a row of the partition's static columns alone (see `AggregateRow::is_static_only`).
    #[scylla(default_when_null)]
    pub subscription_id: String,
    #[scylla(default_when_null)]
    pub charge_id: String,
    #[scylla(default_when_null)]
    pub period_start: DateTime<Utc>,
    #[scylla(default_when_null)]
    pub group_key: String,
    #[scylla(default_when_null)]
    pub period_end: DateTime<Utc>,
    #[scylla(default_when_null)]
    pub metric_code: String,
    #[scylla(default_when_null)]
    pub aggregation: String,
    #[scylla(default_when_null)]
    pub charge_model: String,
    #[scylla(default_when_null)]
    pub charge_properties: String,
    #[scylla(default_when_null)]
    pub currency: String,
    #[scylla(default_when_null)]
    pub events_count: i64,
    pub sum: Option<CqlDecimal>,
    pub max: Option<CqlDecimal>,
    pub latest_ts: Option<DateTime<Utc>>,
    pub latest_event_id: Option<String>,
    pub latest_value: Option<CqlDecimal>,
    pub weighted_integral: Option<CqlDecimal>,
    #[scylla(default_when_null)]
    pub last_partition: i32,
    #[scylla(default_when_null)]
    pub last_offset: i64,
    pub window_partition: Option<i32>,
    pub window_from: Option<i64>,
    pub window_to: Option<i64>,
    pub window_rejected: Option<Vec<u8>>,
    pub dedup_ids: Option<Vec<u8>>,
    pub dedup_written_at: Option<DateTime<Utc>>,
}

impl AggregateRow {
    /// Whether this row holds only the partition's static columns (the applied window of a partition without any
    /// other row, which rating never writes, but an operator's delete could leave): neither aggregate nor block.
    pub fn is_static_only(&self) -> bool {
        self.subscription_id == BLOCK_SUBSCRIPTION
            && self.charge_id.is_empty()
            && self.dedup_ids.is_none()
    }

    /// Whether this row is one of the customer's dedup blocks rather than an aggregate.
    pub fn is_block(&self) -> bool {
        self.subscription_id == BLOCK_SUBSCRIPTION
    }

    /// The ids of a dedup block row and when it was written; a block row without them (one a foreign write left
    /// half) is an error that names the customer and the block.
    pub fn block(&mut self) -> anyhow::Result<(DateTime<Utc>, Vec<u8>)> {
        match (self.dedup_written_at, self.dedup_ids.take()) {
            (Some(at), Some(ids)) => Ok((at, ids)),
            _ => anyhow::bail!(
                "the dedup block {:?} of customer {:?} has no ids or no date",
                self.charge_id,
                self.customer_id
            ),
        }
    }

    /// The customer's [`AppliedWindow`] this row carries (the same on every row of the customer), if one was
    /// written. One that does not decode is left out (with a warning): without it a replay relies on each
    /// aggregate's own offset guard, as before windows existed, rather than stopping the customer's partition.
    pub fn window(&self) -> Option<AppliedWindow> {
        let (Some(partition), Some(from), Some(to)) =
            (self.window_partition, self.window_from, self.window_to)
        else {
            return None;
        };
        match AppliedWindow::decode_rejected(self.window_rejected.as_deref().unwrap_or_default()) {
            Ok(rejected) => Some(AppliedWindow {
                partition,
                from,
                to,
                rejected,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "applied window left out");
                None
            }
        }
    }

    /// The key and state this row stores (unique values are kept in their own table and start empty).
    pub fn into_state(self) -> anyhow::Result<(AggKey, AggState)> {
        let latest = match (
            self.latest_ts,
            self.latest_event_id,
            dec(self.latest_value)?,
        ) {
            (Some(timestamp), Some(event_id), Some(value)) => Some(Latest {
                timestamp,
                event_id,
                value,
            }),
            _ => None,
        };
        let running = RunningAggregate {
            events_count: u64::try_from(self.events_count).unwrap_or_default(),
            sum: dec(self.sum)?.unwrap_or_default(),
            max: dec(self.max)?,
            latest,
            unique: Default::default(),
            weighted_integral: dec(self.weighted_integral)?.unwrap_or_default(),
        };
        let key = AggKey {
            subscription_id: self.subscription_id,
            charge_id: self.charge_id,
            period_start: self.period_start,
            group_key: self.group_key,
        };
        let state = AggState {
            period_end: self.period_end,
            metric_code: self.metric_code,
            aggregation: self.aggregation,
            charge_model: self.charge_model,
            charge_properties: self.charge_properties,
            currency: self.currency,
            running,
            last_partition: self.last_partition,
            last_offset: self.last_offset,
        };
        Ok((key, state))
    }
}

/// The bound values of [`upsert`], in statement order (the last one is the write timestamp).
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct AggWrite<'a> {
    tenant_id: &'a str,
    customer_id: &'a str,
    subscription_id: &'a str,
    charge_id: &'a str,
    period_start: DateTime<Utc>,
    group_key: &'a str,
    period_end: DateTime<Utc>,
    metric_code: &'a str,
    aggregation: &'a str,
    charge_model: &'a str,
    charge_properties: &'a str,
    currency: &'a str,
    events_count: i64,
    sum: CqlDecimal,
    // Absent values are left unset, not written as NULL: a NULL is a tombstone, and tombstones make reads slow.
    max: MaybeUnset<CqlDecimal>,
    latest_ts: MaybeUnset<DateTime<Utc>>,
    latest_event_id: MaybeUnset<&'a str>,
    latest_value: MaybeUnset<CqlDecimal>,
    weighted_integral: CqlDecimal,
    last_partition: i32,
    last_offset: i64,
    write_timestamp: i64,
}

fn unset_if_none<T>(v: Option<T>) -> MaybeUnset<T> {
    v.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

impl<'a> AggWrite<'a> {
    /// The values that store `state` under `key`, stamped with its last offset.
    pub fn new(tenant: &'a str, customer: &'a str, k: &'a AggKey, s: &'a AggState) -> Self {
        let r = &s.running;
        let latest = r.latest.as_ref();
        AggWrite {
            tenant_id: tenant,
            customer_id: customer,
            subscription_id: &k.subscription_id,
            charge_id: &k.charge_id,
            period_start: k.period_start,
            group_key: &k.group_key,
            period_end: s.period_end,
            metric_code: &s.metric_code,
            aggregation: &s.aggregation,
            charge_model: &s.charge_model,
            charge_properties: &s.charge_properties,
            currency: &s.currency,
            events_count: i64::try_from(r.events_count).unwrap_or(i64::MAX),
            sum: to_cql_decimal(r.sum),
            max: unset_if_none(r.max.map(to_cql_decimal)),
            latest_ts: unset_if_none(latest.map(|l| l.timestamp)),
            latest_event_id: unset_if_none(latest.map(|l| l.event_id.as_str())),
            latest_value: unset_if_none(latest.map(|l| to_cql_decimal(l.value))),
            weighted_integral: to_cql_decimal(r.weighted_integral),
            last_partition: s.last_partition,
            last_offset: s.last_offset,
            write_timestamp: s.last_offset + 1,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_finds_the_aggregate_it_names_and_no_other() {
        use std::hash::BuildHasher;
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut map = Aggregates::default();
        let keys = [
            ("s1", "c1", "2026-01-01T00:00:00Z", ""),
            ("s1", "c1", "2026-01-01T00:00:00Z", "eu"),
            ("s1", "c1", "2026-02-01T00:00:00Z", ""),
            ("s1", "c2", "2026-01-01T00:00:00Z", ""),
            ("s2", "c1", "2026-01-01T00:00:00Z", ""),
            // The same bytes split differently between the fields.
            ("s1c", "1", "2026-01-01T00:00:00Z", ""),
        ];
        let borrowed = |(s, c, p, g): (&'static str, &'static str, &str, &'static str)| AggKeyRef {
            subscription_id: s,
            charge_id: c,
            period_start: at(p),
            group_key: g,
        };
        for (i, k) in keys.iter().enumerate() {
            let key = borrowed(*k).to_owned();
            assert_eq!(
                map.hasher().hash_one(&key),
                map.hasher().hash_one(borrowed(*k)),
                "{k:?}"
            );
            let state = AggState {
                period_end: at("2026-03-01T00:00:00Z"),
                metric_code: "m".into(),
                aggregation: "sum".into(),
                charge_model: "standard".into(),
                charge_properties: "{}".into(),
                currency: "EUR".into(),
                running: Default::default(),
                last_partition: 0,
                last_offset: i as i64,
            };
            map.insert(key, state);
        }
        for (i, k) in keys.iter().enumerate() {
            let found = map
                .get_full(&borrowed(*k))
                .map(|(at, _, s)| (at, s.last_offset));
            assert_eq!(found, Some((i, i as i64)), "{k:?}");
        }
        assert!(map
            .get(&borrowed(("s3", "c1", "2026-01-01T00:00:00Z", "")))
            .is_none());
    }

    #[test]
    fn aggregation_names_read_back() {
        use AggregationType::*;
        for a in [
            CountAgg,
            SumAgg,
            MaxAgg,
            UniqueCountAgg,
            LatestAgg,
            WeightedSumAgg,
        ] {
            let state = AggState {
                period_end: DateTime::<Utc>::MIN_UTC,
                metric_code: String::new(),
                aggregation: aggregation_name(a).to_owned(),
                charge_model: String::new(),
                charge_properties: String::new(),
                currency: String::new(),
                running: Default::default(),
                last_partition: 0,
                last_offset: 0,
            };
            assert_eq!(state.aggregation_type().unwrap(), a);
        }
    }

    #[test]
    fn a_window_covers_its_offsets_but_the_rejected_ones() {
        let w = AppliedWindow {
            partition: 3,
            from: 10,
            to: 20,
            rejected: AppliedWindow::decode_rejected(
                &AppliedWindow {
                    rejected: vec![15, 12],
                    ..Default::default()
                }
                .encode_rejected(),
            )
            .unwrap(),
        };
        assert_eq!(w.rejected, vec![12, 15]);
        let applied: Vec<i64> = (0..30).filter(|o| w.applied(3, *o)).collect();
        let expected: Vec<i64> = (10..=20).filter(|o| *o != 12 && *o != 15).collect();
        assert_eq!(applied, expected);
        assert!(
            !w.applied(4, 11),
            "another partition's offsets are not the customer's"
        );
        assert!(AppliedWindow::decode_rejected(&[0; 7]).is_err());
    }

    #[test]
    fn rows_of_a_partition_are_aggregates_blocks_or_its_static_columns_alone() {
        let aggregate = || AggregateRow {
            window_rejected: None,
            ..row_with_window(Vec::new())
        };
        let a = aggregate();
        assert!(!a.is_static_only());
        assert!(!a.is_block());
        let at = DateTime::<Utc>::MIN_UTC;
        let mut block = AggregateRow {
            subscription_id: BLOCK_SUBSCRIPTION.into(),
            charge_id: uuid::Uuid::nil().to_string(),
            dedup_ids: Some(vec![7; 16]),
            dedup_written_at: Some(at),
            ..aggregate()
        };
        assert!(!block.is_static_only());
        assert!(block.is_block());
        assert_eq!(block.block().unwrap(), (at, vec![7; 16]));
        let mut half = AggregateRow {
            subscription_id: BLOCK_SUBSCRIPTION.into(),
            charge_id: "b".into(),
            ..aggregate()
        };
        assert!(half.is_block());
        assert!(half.block().is_err(), "a block row without its ids");
        let only_static = AggregateRow {
            subscription_id: String::new(),
            charge_id: String::new(),
            ..aggregate()
        };
        assert!(only_static.is_static_only());
    }

    /// An aggregate row carrying a window whose rejected offsets are `rejected`.
    /// An aggregate row of customer `cu` with an applied window whose rejected offsets are `rejected`.
    pub(crate) fn row_with_window(rejected: Vec<u8>) -> AggregateRow {
        AggregateRow {
            customer_id: "cu".into(),
            subscription_id: "s".into(),
            charge_id: "c".into(),
            period_start: DateTime::<Utc>::MIN_UTC,
            group_key: String::new(),
            period_end: DateTime::<Utc>::MIN_UTC,
            metric_code: "m".into(),
            aggregation: "sum_agg".into(),
            charge_model: "standard".into(),
            charge_properties: "{}".into(),
            currency: "EUR".into(),
            events_count: 1,
            sum: None,
            max: None,
            latest_ts: None,
            latest_event_id: None,
            latest_value: None,
            weighted_integral: None,
            last_partition: 2,
            last_offset: 5,
            window_partition: Some(2),
            window_from: Some(3),
            window_to: Some(5),
            window_rejected: Some(rejected),
            dedup_ids: None,
            dedup_written_at: None,
        }
    }

    #[test]
    fn a_row_carries_the_window_and_one_that_does_not_decode_is_left_out() {
        let row = row_with_window;
        assert_eq!(
            row(4i64.to_be_bytes().to_vec()).window(),
            Some(AppliedWindow {
                partition: 2,
                from: 3,
                to: 5,
                rejected: vec![4],
            })
        );
        assert_eq!(row(vec![1, 2, 3]).window(), None);
        let mut without = row(Vec::new());
        without.window_to = None;
        assert_eq!(without.window(), None);
    }

    #[test]
    fn the_window_update_binds_every_value() {
        assert_eq!(update_window("ks").matches('?').count(), 7);
    }

    #[test]
    fn a_block_is_written_as_a_row_keyed_by_an_empty_subscription_for_forty_days() {
        let q = insert_block("ks");
        assert_eq!(q.matches('?').count(), 5);
        assert!(q.contains("VALUES (?, ?, '', ?, 0, '', ?, ?)"), "{q}");
        assert!(q.ends_with("USING TTL 3456000"), "{q}");
        assert!(select_by_customer("ks").ends_with("AND subscription_id > ''"));
    }

    #[test]
    fn the_upsert_binds_every_column_and_the_timestamp() {
        let q = upsert("ks");
        let columns = COLUMNS.split(',').count() + 2;
        assert_eq!(q.matches('?').count(), columns + 1);
    }
}
