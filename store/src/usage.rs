//! The usage tables together, as their writer (rating) and their readers use them: prepared statements, the
//! load order that makes a customer's state consistent while another instance may still be writing it, and the
//! checkpoint writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use billing_core::aggregation::AggregationType;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::usage_aggregates::{
    self, AggKey, AggState, AggWrite, AggregateRow, Aggregates, AppliedWindow, WindowWrite,
};
use crate::usage_dedup::{self, IdHash, SeenIds};
use crate::usage_unique_values;

/// Everything stored about one customer's usage.
#[derive(Debug, Default)]
pub struct CustomerUsage {
    /// Aggregates by key, unique values included.
    pub aggregates: Aggregates,
    /// Event ids already counted (empty when loaded with [`UsageStore::aggregates`]).
    pub seen: SeenIds,
    /// The events its last stored checkpoint applied, as loaded (see [`AppliedWindow`]).
    pub window: Option<AppliedWindow>,
}

impl CustomerUsage {
    /// About how many bytes of memory this usage takes: the aggregates' table and what its keys and states hold on
    /// the heap (unique values included, each counted with a set node's share), the kept ids, the window. An
    /// estimate for a memory budget, not an allocator's count.
    pub fn approx_bytes(&self) -> usize {
        /// A set node's share per unique value, beside the value's own bytes.
        const PER_UNIQUE_VALUE: usize = 64;
        // An entry (its hash beside it) and a slot of the index table with its control byte.
        let slot =
            std::mem::size_of::<(u64, AggKey, AggState)>() + std::mem::size_of::<usize>() + 1;
        let heap: usize = self
            .aggregates
            .iter()
            .map(|(k, st)| {
                let latest = st
                    .running
                    .latest
                    .as_ref()
                    .map_or(0, |l| l.event_id.capacity());
                let unique: usize = st
                    .running
                    .unique
                    .iter()
                    .map(|v| v.capacity() + PER_UNIQUE_VALUE)
                    .sum();
                [
                    &k.subscription_id,
                    &k.charge_id,
                    &k.group_key,
                    &st.metric_code,
                    &st.aggregation,
                    &st.charge_model,
                    &st.charge_properties,
                    &st.currency,
                ]
                .iter()
                .map(|s| s.capacity())
                .sum::<usize>()
                    + latest
                    + unique
            })
            .sum();
        let window = self
            .window
            .as_ref()
            .map_or(0, |w| w.rejected.capacity() * std::mem::size_of::<i64>());
        std::mem::size_of::<Self>()
            + self.aggregates.capacity() * slot
            + heap
            + self.seen.approx_bytes()
            + window
    }

    /// The usage of a subscription's billing period for the charges of its plans, as the core's input (what
    /// `Reference::invoice_on` asks for).
    pub fn for_subscription(
        &self,
        s: &billing_core::invoicing::BillableSubscription,
        period: &billing_core::period::BillingPeriod,
    ) -> Result<Vec<billing_core::invoicing::ChargeAggregate>, String> {
        let id = s.id.clone().unwrap_or_default();
        let has = |code: &str| {
            s.plans
                .iter()
                .any(|p| p.charges.iter().any(|c| c.code == code))
        };
        self.charge_aggregates(&id, period, has)
            .map_err(|e| e.to_string())
    }

    /// The usage of one subscription's billing period as the core's pre-aggregated input, for the charges
    /// `has_charge` knows (rows of charges no longer on the plan are left out).
    pub fn charge_aggregates(
        &self,
        subscription_id: &str,
        period: &billing_core::period::BillingPeriod,
        has_charge: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<billing_core::invoicing::ChargeAggregate>> {
        let mut out = Vec::new();
        for (k, st) in &self.aggregates {
            if k.subscription_id != subscription_id
                || k.period_start != period.start
                || !has_charge(&k.charge_id)
            {
                continue;
            }
            let aggregation = st.aggregation_type()?;
            let units = st
                .running
                .units(aggregation, None, period.start, st.period_end)?;
            out.push(billing_core::invoicing::ChargeAggregate {
                charge: k.charge_id.clone(),
                group: (!k.group_key.is_empty()).then(|| k.group_key.clone()),
                aggregate: billing_core::aggregation::Aggregate {
                    units,
                    events_count: st.running.events_count,
                    event_values: Vec::new(),
                },
            });
        }
        Ok(out)
    }
}

/// One aggregate to write: its key, its state and the unique values added since the last write.
pub type AggregateWrite = (AggKey, AggState, Vec<String>);

/// What one checkpoint writes for one customer: its changed aggregates, with the ids it counted as one block.
#[derive(Debug, Default)]
pub struct CustomerWrite {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// The aggregates changed since the last checkpoint.
    pub aggregates: Vec<AggregateWrite>,
    /// The ids counted since the last checkpoint.
    pub seen: Vec<IdHash>,
    /// The events of the customer this checkpoint applied (written with its aggregates; `None` when it changed
    /// none).
    pub window: Option<AppliedWindow>,
    /// The block's id, fixed before the first attempt so that a retried write overwrites its own row.
    pub block_id: uuid::Uuid,
}

/// Record the ids of a stored block (written at `written_at`) as counted. A block that does not decode (only a
/// foreign write makes one) is left out with an error in the log rather than failing the customer's loads, which
/// would stop its partition for good: its ids then no longer stop a resent duplicate, while each aggregate's own
/// offset guard still stops a replay.
fn insert_block(
    usage: &mut CustomerUsage,
    customer: &str,
    block: anyhow::Result<(DateTime<Utc>, Vec<u8>)>,
) {
    let decoded = block.and_then(|(written_at, ids)| {
        Ok((
            usage_dedup::day_of(written_at),
            usage_dedup::decode_block(&ids)?,
        ))
    });
    match decoded {
        Ok((day, ids)) => {
            for id in ids {
                usage.seen.insert_on(id, day);
            }
        }
        Err(e) => tracing::error!(customer, error = %e, "unreadable dedup block left out"),
    }
}

/// Add rows of `usage_aggregates` to the usage of their customers in `out` (others are ignored): the window, then
/// each row's dedup block or aggregate.
fn fold_rows(
    rows: Vec<AggregateRow>,
    out: &mut HashMap<String, CustomerUsage>,
) -> anyhow::Result<()> {
    for mut r in rows {
        let Some(usage) = out.get_mut(&r.customer_id) else {
            continue;
        };
        if usage.window.is_none() {
            usage.window = r.window();
        }
        if r.is_static_only() {
            continue;
        }
        if r.is_block() {
            let block = r.block();
            insert_block(usage, &r.customer_id, block);
            continue;
        }
        r.customer_id = String::new();
        let (key, state) = r.into_state()?;
        usage.aggregates.insert(key, state);
    }
    Ok(())
}

/// Whether a legacy dedup table (`usage_dedup`, then `usage_dedup_blocks`: nothing writes them any more) may still
/// hold a row, by reading any one with `query`: yes unless the read finds it empty or the table is gone (an
/// operator may drop it once its rows expired). A scan that fails on a table that is there, e.g. over the
/// tombstones of expired rows, keeps the loads reading it rather than stopping the service.
async fn legacy_rows_left(session: &Session, ks: &str, table: &str, query: String) -> bool {
    let rows = async {
        let rows = session
            .query_unpaged(query.as_str(), ())
            .await?
            .into_rows_result()?;
        anyhow::Ok(rows.rows_num())
    };
    let scanned = rows.await;
    let exists = match scanned {
        Ok(_) => Ok(true),
        Err(_) => table_exists(session, ks, table).await,
    };
    legacy_left(scanned, exists, table)
}

/// [`legacy_rows_left`]'s decision from its scan and, when the scan failed, whether the table exists.
fn legacy_left(scanned: anyhow::Result<usize>, exists: anyhow::Result<bool>, table: &str) -> bool {
    match (scanned, exists) {
        (Ok(n), _) => n > 0,
        (Err(_), Ok(false)) => false,
        (Err(e), _) => {
            tracing::warn!(table, error = %e, "legacy dedup table not scanned; loads keep reading it");
            true
        }
    }
}

/// Whether `ks.table` exists, from the store's schema tables.
async fn table_exists(session: &Session, ks: &str, table: &str) -> anyhow::Result<bool> {
    let rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
            (ks, table),
        )
        .await?
        .into_rows_result()?;
    Ok(rows.rows_num() > 0)
}

/// How many customers a checkpoint writes at once.
const WRITE_CONCURRENCY: usize = 128;

/// Statements per batch at most: a batch holds one customer's rows (one partition per table), and stays well
/// under the store's batch size limits.
const MAX_BATCH_STATEMENTS: usize = 64;

/// Customers one read of [`UsageStore::load_many`] names at most (`customer_id IN ?`, one tenant): ScyllaDB refuses
/// more than 100 partition keys in one query by default (`max_partition_key_restrictions_per_query`).
pub const MAX_CUSTOMERS_PER_READ: usize = 64;

/// Reads of [`UsageStore::load_many`] in flight at once.
const READ_CONCURRENCY: usize = 8;

/// Prepared statements over `usage_aggregates` (a customer's aggregates, applied window and dedup blocks),
/// `usage_unique_values`, and the legacy `usage_dedup_blocks` and `usage_dedup`.
pub struct UsageStore {
    session: Arc<Session>,
    select_aggregates: PreparedStatement,
    select_state_in: PreparedStatement,
    select_unique: PreparedStatement,
    select_unique_in: PreparedStatement,
    /// `None` when the legacy table was empty when the store was opened (nothing writes it since blocks moved
    /// into `usage_aggregates`, so it stays empty): loads then skip it.
    select_legacy_blocks_in: Option<PreparedStatement>,
    /// The same for the older one-row-per-id table.
    select_legacy_dedup_in: Option<PreparedStatement>,
    upsert_aggregate: PreparedStatement,
    update_window: PreparedStatement,
    insert_unique: PreparedStatement,
    insert_block: PreparedStatement,
}

impl UsageStore {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        let legacy = |left: bool, q: String| async move {
            match left {
                true => prepare(q, true).await.map(Some),
                false => Ok(None),
            }
        };
        let blocks_left = legacy_rows_left(
            &session,
            ks,
            usage_dedup::LEGACY_BLOCKS_TABLE,
            usage_dedup::select_any_legacy_block(ks),
        )
        .await;
        let ids_left = legacy_rows_left(
            &session,
            ks,
            usage_dedup::LEGACY_IDS_TABLE,
            usage_dedup::select_any_legacy(ks),
        )
        .await;
        Ok(UsageStore {
            select_aggregates: prepare(usage_aggregates::select_by_customer(ks), true).await?,
            select_state_in: prepare(usage_aggregates::select_state_by_customers(ks), true).await?,
            select_unique: prepare(usage_unique_values::select_by_customer(ks), true).await?,
            select_unique_in: prepare(usage_unique_values::select_by_customers(ks), true).await?,
            select_legacy_blocks_in: legacy(
                blocks_left,
                usage_dedup::select_blocks_by_customers(ks),
            )
            .await?,
            select_legacy_dedup_in: legacy(ids_left, usage_dedup::select_legacy_by_customers(ks))
                .await?,
            upsert_aggregate: prepare(usage_aggregates::upsert(ks), true).await?,
            update_window: prepare(usage_aggregates::update_window(ks), true).await?,
            insert_unique: prepare(usage_unique_values::insert(ks), true).await?,
            insert_block: prepare(usage_aggregates::insert_block(ks), true).await?,
            session,
        })
    }

    /// Every row `statement` returns for `values`, page after page.
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> anyhow::Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let mut rows = self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<R>()?;
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            out.push(row);
        }
        Ok(out)
    }

    /// [`Self::rows`] of a statement prepared only when needed (a legacy table's): none without it.
    async fn rows_if<R>(
        &self,
        statement: &Option<PreparedStatement>,
        values: impl SerializeRow,
    ) -> anyhow::Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        match statement {
            Some(statement) => self.rows(statement, values).await,
            None => Ok(Vec::new()),
        }
    }

    /// Everything stored about a customer: its partition of `usage_aggregates` in one read (aggregates, applied
    /// window and dedup blocks, which a checkpoint writes in one single-partition batch, so a read sees a checkpoint
    /// whole or not at all, even while another instance is still writing it; the blocks sort first, so a read of
    /// several pages takes its ids from before its aggregates), then unique values.
    pub async fn load(&self, tenant: &str, customer: &str) -> anyhow::Result<CustomerUsage> {
        let mut loaded = self.load_of(tenant, &[customer]).await?;
        Ok(loaded.remove(customer).unwrap_or_default())
    }

    /// What [`Self::load`] reads, for many customers at once: one query names up to [`MAX_CUSTOMERS_PER_READ`]
    /// customers of a tenant, so the store answers a few requests instead of one or two per customer (loads while
    /// rating catches up are mostly new customers, whose reads find nothing). Every customer named is in the
    /// answer, with empty usage when nothing is stored.
    pub async fn load_many(
        &self,
        customers: &[(&str, &str)],
    ) -> anyhow::Result<HashMap<(String, String), CustomerUsage>> {
        let mut by_tenant: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (tenant, customer) in customers {
            by_tenant.entry(tenant).or_default().insert(customer);
        }
        let by_tenant: Vec<(&str, Vec<&str>)> = by_tenant
            .into_iter()
            .map(|(t, cs)| (t, cs.into_iter().collect()))
            .collect();
        let reads: Vec<_> = by_tenant
            .iter()
            .flat_map(|(tenant, cs)| {
                cs.chunks(MAX_CUSTOMERS_PER_READ)
                    .map(move |cs| (*tenant, cs))
            })
            .map(|(tenant, cs)| async move {
                let loaded = self.load_of(tenant, cs).await?;
                anyhow::Ok((tenant, loaded))
            })
            .collect();
        let mut out = HashMap::with_capacity(customers.len());
        let mut reads = futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY);
        while let Some((tenant, loaded)) = reads.try_next().await? {
            out.extend(loaded.into_iter().map(|(c, u)| ((tenant.to_owned(), c), u)));
        }
        Ok(out)
    }

    /// [`Self::load`] for some distinct customers of one tenant.
    async fn load_of(
        &self,
        tenant: &str,
        customers: &[&str],
    ) -> anyhow::Result<HashMap<String, CustomerUsage>> {
        let mut out: HashMap<String, CustomerUsage> = customers
            .iter()
            .map(|c| ((*c).to_owned(), CustomerUsage::default()))
            .collect();
        // Ids of the legacy tables (read only while they held rows when the store was opened) first, as ids were
        // read before aggregates when they were written after them.
        let (legacy_blocks, legacy_ids) = futures::try_join!(
            self.rows_if::<(String, DateTime<Utc>, Vec<u8>)>(
                &self.select_legacy_blocks_in,
                (tenant, customers)
            ),
            self.rows_if::<(String, String)>(&self.select_legacy_dedup_in, (tenant, customers)),
        )?;
        // A legacy row's write time is not read: it is dated today, so it is kept in memory at most 40 days more.
        let today = usage_dedup::day_of(Utc::now());
        for (customer, event_id) in legacy_ids {
            if let Some(usage) = out.get_mut(&customer) {
                usage.seen.insert_on(IdHash::of(&event_id), today);
            }
        }
        for (customer, written_at, ids) in legacy_blocks {
            if let Some(usage) = out.get_mut(&customer) {
                insert_block(usage, &customer, Ok((written_at, ids)));
            }
        }
        let rows = self
            .rows(&self.select_state_in, (tenant, customers))
            .await?;
        fold_rows(rows, &mut out)?;
        self.read_unique(tenant, &mut out).await?;
        Ok(out)
    }

    /// A customer's aggregates with their unique values (no dedup ids): what a reader needs to price usage.
    pub async fn aggregates(&self, tenant: &str, customer: &str) -> anyhow::Result<CustomerUsage> {
        self.aggregates_with(tenant, customer, true).await
    }

    /// A customer's aggregates, with their unique values only when `unique` (a reader whose charges count no
    /// unique values saves that read).
    pub async fn aggregates_with(
        &self,
        tenant: &str,
        customer: &str,
        unique: bool,
    ) -> anyhow::Result<CustomerUsage> {
        let mut out = HashMap::from([(customer.to_owned(), CustomerUsage::default())]);
        self.read_aggregates(tenant, customer, unique, &mut out)
            .await?;
        Ok(out.remove(customer).unwrap_or_default())
    }

    /// Read the aggregates of `customer` into `out` (which names it), with their unique values when `unique`.
    async fn read_aggregates(
        &self,
        tenant: &str,
        customer: &str,
        unique: bool,
        out: &mut HashMap<String, CustomerUsage>,
    ) -> anyhow::Result<()> {
        let rows = self
            .rows(&self.select_aggregates, (tenant, customer))
            .await?;
        fold_rows(rows, out)?;
        if unique {
            self.read_unique(tenant, out).await?;
        }
        Ok(())
    }

    /// Read the unique values of the customers of `out` that have a unique-count aggregate.
    async fn read_unique(
        &self,
        tenant: &str,
        out: &mut HashMap<String, CustomerUsage>,
    ) -> anyhow::Result<()> {
        // Unique values belong to unique-count aggregates only: a customer without one (a new customer has no
        // aggregate at all) has none to read.
        let unique_count = usage_aggregates::aggregation_name(AggregationType::UniqueCountAgg);
        let counting: Vec<&str> = out
            .iter()
            .filter(|(_, u)| u.aggregates.values().any(|s| s.aggregation == unique_count))
            .map(|(c, _)| c.as_str())
            .collect();
        let rows: Vec<(String, String, String, DateTime<Utc>, String, String)> =
            match counting.as_slice() {
                [] => return Ok(()),
                [one] => self.rows(&self.select_unique, (tenant, *one)).await?,
                many => self.rows(&self.select_unique_in, (tenant, many)).await?,
            };
        for (customer, subscription_id, charge_id, period_start, group_key, value) in rows {
            let key = AggKey {
                subscription_id,
                charge_id,
                period_start,
                group_key,
            };
            if let Some(state) = out
                .get_mut(&customer)
                .and_then(|u| u.aggregates.get_mut(&key))
            {
                state.running.unique.insert(value);
            }
        }
        Ok(())
    }

    /// Write a checkpoint: for each customer (many at once), its new unique values, then its changed aggregates in
    /// single-partition batches, the last of which also holds its applied window and the block of ids it counted
    /// (usually one batch in all). Aggregates are absolute values stamped with their last offset, and a block keeps
    /// its id across retries, so the whole write can be retried.
    pub async fn save_checkpoint(&self, customers: &[CustomerWrite]) -> anyhow::Result<()> {
        // At most WRITE_CONCURRENCY writes exist at a time, each made when one ends. (Not a lazy `map` into
        // `buffer_unordered`: over borrowed rows it is not `Send` for every lifetime, which a spawned checkpoint
        // needs. Nor every write made first: thousands of futures of a few KiB each were fresh pages to fault in
        // at every checkpoint.)
        let mut next = customers.iter();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while running.len() < WRITE_CONCURRENCY {
                let Some(c) = next.next() else { break };
                running.push(self.save_customer(c));
            }
            match running.next().await {
                Some(written) => written?,
                None => return Ok(()),
            }
        }
    }

    /// One unlogged batch of `statement`, once per row of `values` (all in one partition).
    async fn batch_of<V: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        values: Vec<V>,
    ) -> anyhow::Result<()> {
        self.batch(values.into_iter().map(|v| (statement, v)).collect())
            .await
    }

    /// One unlogged batch of statements with their values (all in one partition, so it is applied whole).
    async fn batch<V: SerializeRow>(
        &self,
        statements: Vec<(&PreparedStatement, V)>,
    ) -> anyhow::Result<()> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(statements.len());
        for (statement, v) in statements {
            batch.append_statement(statement.clone());
            values.push(v);
        }
        self.session.batch(&batch, values).await?;
        Ok(())
    }

    async fn save_customer(&self, c: &CustomerWrite) -> anyhow::Result<()> {
        let (tenant, customer) = (c.tenant.as_str(), c.customer.as_str());
        // Unique values before the aggregates that count them, so that a reader never sees a count above its set.
        let unique: Vec<_> = c
            .aggregates
            .iter()
            .flat_map(|(k, _, values)| values.iter().map(move |v| (k, v)))
            .collect();
        for chunk in unique.chunks(MAX_BATCH_STATEMENTS) {
            let values = chunk.iter().map(|(k, value)| {
                (
                    tenant,
                    customer,
                    k.subscription_id.as_str(),
                    k.charge_id.as_str(),
                    k.period_start,
                    k.group_key.as_str(),
                    value.as_str(),
                )
            });
            self.batch_of(&self.insert_unique, values.collect()).await?;
        }
        // The applied window and the first block of counted ids go in the last batch of aggregates (two less
        // aggregates per batch leave them room): durable exactly when the aggregates all are, and in one
        // single-partition batch with the last of them, which the store applies whole.
        let written_at = Utc::now();
        let mut blocks = c
            .seen
            .chunks(usage_dedup::MAX_IDS_PER_BLOCK)
            .enumerate()
            .map(|(i, ids)| {
                // Further blocks of one checkpoint derive their ids from the first: stable across retries.
                let id = uuid::Uuid::from_u128(c.block_id.as_u128().wrapping_add(i as u128));
                (id.to_string(), usage_dedup::encode_block(ids))
            });
        let block_write = |(id, ids): (String, Vec<u8>)| (tenant, customer, id, ids, written_at);
        let chunks: Vec<_> = c.aggregates.chunks(MAX_BATCH_STATEMENTS - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut statements: Vec<(
                &PreparedStatement,
                Box<dyn SerializeRow + Send + Sync + '_>,
            )> = chunk
                .iter()
                .map(|(k, s, _)| {
                    let row: Box<dyn SerializeRow + Send + Sync + '_> =
                        Box::new(AggWrite::new(tenant, customer, k, s));
                    (&self.upsert_aggregate, row)
                })
                .collect();
            if i + 1 == chunks.len() {
                if let Some(window) = &c.window {
                    statements.push((
                        &self.update_window,
                        Box::new(WindowWrite::new(tenant, customer, window)),
                    ));
                }
                if let Some(block) = blocks.next() {
                    statements.push((&self.insert_block, Box::new(block_write(block))));
                }
            }
            self.batch(statements).await?;
        }
        // Blocks left (the ids of a customer whose aggregates did not change, or more than one block's worth),
        // after the aggregates.
        for block in blocks {
            self.session
                .execute_unpaged(&self.insert_block, block_write(block))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage_aggregates::tests::row_with_window;
    use crate::usage_aggregates::BLOCK_SUBSCRIPTION;

    #[test]
    fn an_unreadable_block_is_left_out_and_the_rest_of_the_customer_loads() {
        let at: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        let block =
            |name: &str, ids: Option<Vec<u8>>, written: Option<DateTime<Utc>>| AggregateRow {
                subscription_id: BLOCK_SUBSCRIPTION.into(),
                charge_id: name.into(),
                dedup_ids: ids,
                dedup_written_at: written,
                ..row_with_window(Vec::new())
            };
        let (good, torn) = (IdHash::of("good"), IdHash::of("torn"));
        let mut short = usage_dedup::encode_block(&[torn]);
        short.pop();
        let rows = vec![
            block("no-ids", None, Some(at)),
            block("no-date", Some(usage_dedup::encode_block(&[torn])), None),
            block("short", Some(short), Some(at)),
            block("good", Some(usage_dedup::encode_block(&[good])), Some(at)),
            row_with_window(Vec::new()),
        ];
        let mut out = HashMap::from([("cu".to_owned(), CustomerUsage::default())]);
        fold_rows(rows, &mut out).unwrap();
        let usage = &out["cu"];
        assert!(usage.seen.contains(&good), "the readable block's ids");
        assert!(
            !usage.seen.contains(&torn),
            "nothing of the unreadable ones"
        );
        assert_eq!(usage.seen.len(), 1);
        assert_eq!(usage.aggregates.len(), 1, "the aggregate still loads");
        assert!(usage.window.is_some());
    }

    #[test]
    fn the_size_estimate_grows_with_ids_aggregates_and_unique_values() {
        let empty = CustomerUsage::default().approx_bytes();
        let mut usage = CustomerUsage::default();
        for i in 0..1_000 {
            usage.seen.insert(IdHash::of(&i.to_string()));
        }
        let with_ids = usage.approx_bytes();
        assert!(
            with_ids >= empty + 1_000 * 20,
            "1,000 ids of 16 bytes and a day: {with_ids}"
        );
        let (key, state) = row_with_window(Vec::new()).into_state().unwrap();
        usage.aggregates.insert(key.clone(), state);
        let with_aggregate = usage.approx_bytes();
        assert!(with_aggregate > with_ids + std::mem::size_of::<(AggKey, AggState)>());
        let running = &mut usage.aggregates.get_mut(&key).unwrap().running;
        for i in 0..100 {
            running.unique.insert(format!("user-{i:04}"));
        }
        assert!(usage.approx_bytes() >= with_aggregate + 100 * 9);
    }

    #[test]
    fn a_legacy_table_is_read_unless_found_empty_or_gone() {
        fn failed<T>() -> anyhow::Result<T> {
            Err(anyhow::anyhow!("read timeout"))
        }
        assert!(legacy_left(Ok(1), Ok(true), "t"));
        assert!(!legacy_left(Ok(0), Ok(true), "t"));
        assert!(!legacy_left(failed(), Ok(false), "t"), "dropped");
        assert!(legacy_left(failed(), Ok(true), "t"), "there, scan failed");
        assert!(legacy_left(failed(), failed(), "t"), "nothing known");
    }
}
