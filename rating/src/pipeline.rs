//! The consume → validate → attribute → aggregate → checkpoint → commit loop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use billing_runtime::kafka::{self, Topics};
use billing_runtime::{Settings, Shutdown};
use billing_schemas::reference::AttributionMemo;
use billing_schemas::usage::UsageEvent;
use billing_store::usage::{CustomerUsage, CustomerWrite, UsageStore};
use billing_store::usage_aggregates::AppliedWindow;
use billing_store::usage_dedup::{self, IdHash};
use billing_store::usage_events::{self, EncodedRows};

use crate::metrics::Metrics;
use crate::rate::{self, Rated};
use crate::reference::SharedReference;
use crate::validate::Rejection;

/// Counts rebalances and records the partitions they assigned or revoked, so the loop knows which customers'
/// cached state may be stale (another member may have written it): those of the partitions that changed hands.
struct RebalanceCounter(Arc<AtomicU64>, Arc<std::sync::Mutex<HashSet<i32>>>);

impl ClientContext for RebalanceCounter {}

impl ConsumerContext for RebalanceCounter {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let moved = match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                Some(tpl)
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                Some(tpl)
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                None
            }
        };
        let mut changed = self.1.lock().unwrap_or_else(|p| p.into_inner());
        match moved {
            Some(tpl) => changed.extend(tpl.elements().iter().map(|e| e.partition())),
            // Unknown: every partition is treated as moved.
            None => {
                changed.insert(-1);
            }
        }
        drop(changed);
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A customer, by its Kafka key `tenant/customer` (the key every message about it carries, so a lookup borrows
/// the message's key instead of building one).
type CustomerKey = String;

/// The maps rating looks up once or more per event (customers, their pending changes): hashbrown's default hasher
/// (foldhash), not the std maps' SipHash, which rating's profile showed among its top costs.
type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// A customer's usage in memory.
struct Cached {
    usage: CustomerUsage,
    /// Its last attribution, reused while it holds.
    memo: Option<AttributionMemo>,
    /// The count of durable checkpoints when it was last used (for eviction, least recently used first).
    last_used: u64,
    /// Its memory by estimate ([`Cached::weigh`]) when it was loaded or last checkpointed.
    bytes: usize,
}

impl Cached {
    /// A customer just loaded, used at the given count of durable checkpoints.
    fn new(key: &str, usage: CustomerUsage, last_used: u64) -> Self {
        let mut cached = Cached {
            usage,
            memo: None,
            last_used,
            bytes: 0,
        };
        cached.bytes = cached.weigh(key);
        cached
    }

    /// Its memory by estimate: its usage ([`CustomerUsage::approx_bytes`]), its key, this record and its slot.
    fn weigh(&self, key: &str) -> usize {
        self.usage.approx_bytes() + key.len() + std::mem::size_of::<(CustomerKey, Cached)>()
    }
}

/// Customer loads running in the background for a batch, and the rebalance and eviction counts when they started.
struct Loads {
    task: tokio::task::JoinHandle<anyhow::Result<Vec<(CustomerKey, CustomerUsage)>>>,
    rebalances: u64,
    evictions: u64,
}

/// Messages taken from the consumer's buffer in one go.
const PREFETCH_BATCH: usize = 2_000;
/// How often usage waits for the reference topics to be read to their end, besides before a rejection.
const REFERENCE_REFRESH: Duration = Duration::from_secs(1);
/// After customers were dropped for resident memory, how long before resident memory may drop more: time for the
/// allocator to give what they held back to the system (mimalloc purges freed memory after 10 ms).
const RESIDENT_SETTLE: Duration = Duration::from_secs(1);
/// Behind by more than this many events, rating checkpoints every `rating.catch_up_interval`.
const CATCH_UP_LAG: i64 = 10_000;
/// How long a wait on a store may last before the consumer pauses its partitions and keeps polling (so the group
/// keeps it as a member whatever the outage's length).
const HOLD_PAUSE: Duration = Duration::from_secs(2);

/// Work applied in memory since the last checkpoint.
#[derive(Default)]
struct Pending {
    /// By customer: what the checkpoint writes for it.
    customers: FastMap<CustomerKey, PendingCustomer>,
    /// The accepted events' ClickHouse rows.
    rows: EncodedRows,
    dead_letters: Vec<DeadLetter>,
    /// Next offset to commit per partition.
    offsets: FastMap<i32, i64>,
    messages: usize,
}

/// One customer's changes since the last checkpoint.
struct PendingCustomer {
    tenant: String,
    customer: String,
    /// Aggregates changed, by their index in the customer's aggregates (valid until the checkpoint: a customer with
    /// pending changes is neither evicted nor reloaded, and a customer's aggregates are never removed).
    dirty: IndexSet,
    /// Unique values added, by aggregate index.
    new_unique: FastMap<usize, Vec<String>>,
    /// Ids counted.
    seen: Vec<IdHash>,
    /// The customer's partition, the first offset of it read since the last checkpoint, the last one applied.
    partition: i32,
    first: i64,
    applied: Option<i64>,
    /// Offsets of it rejected since the last checkpoint.
    rejected: Vec<i64>,
}

/// A set of small indices, one bit each.
#[derive(Default)]
struct IndexSet(Vec<u64>);

impl IndexSet {
    fn insert(&mut self, i: usize) {
        let (word, bit) = (i / 64, i % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    /// The indices, in increasing order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

impl PendingCustomer {
    /// What the checkpoint stores with the customer's aggregates (see `AppliedWindow`).
    fn window(&self) -> Option<AppliedWindow> {
        let to = self.applied?;
        Some(AppliedWindow {
            partition: self.partition,
            from: self.first,
            to,
            rejected: self.rejected.iter().copied().filter(|o| *o < to).collect(),
        })
    }
}

impl Pending {
    /// The customer's pending changes, created at the first of its messages read since the last checkpoint.
    fn customer(
        &mut self,
        key: &str,
        tenant: &str,
        customer: &str,
        partition: i32,
        offset: i64,
    ) -> &mut PendingCustomer {
        // One lookup by the borrowed key; the key is copied only for a customer new to this checkpoint.
        self.customers
            .entry_ref(key)
            .or_insert_with(|| PendingCustomer {
                tenant: tenant.to_owned(),
                customer: customer.to_owned(),
                dirty: Default::default(),
                new_unique: Default::default(),
                seen: Vec::new(),
                partition,
                first: offset,
                applied: None,
                rejected: Vec::new(),
            })
    }

    /// Remember an event applied at `offset`: its id counted, the aggregates to write and their new unique values.
    fn mark(
        &mut self,
        key: &str,
        event: &UsageEvent,
        (partition, offset): (i32, i64),
        counted: IdHash,
        touched: Vec<usize>,
        new_unique: Vec<(usize, String)>,
    ) {
        let pending = self.customer(key, &event.tenant_id, &event.customer_id, partition, offset);
        pending.seen.push(counted);
        pending.applied = Some(offset);
        for i in touched {
            pending.dirty.insert(i);
        }
        for (i, value) in new_unique {
            pending.new_unique.entry(i).or_default().push(value);
        }
    }

    /// Remember that the customer's event at `offset` was rejected (a replay must rate it again, not skip it).
    fn reject(&mut self, key: &str, (partition, offset): (i32, i64)) {
        if let Some((tenant, customer)) = key.split_once('/') {
            self.customer(key, tenant, customer, partition, offset)
                .rejected
                .push(offset);
        }
    }
}

/// Progress shared with the readiness check.
#[derive(Clone, Default)]
pub struct Progress {
    /// Unix millis of the last checkpoint that covered messages.
    pub last_checkpoint_ms: Arc<AtomicI64>,
    /// Unix millis since which the loop has been waiting on a store (0: it is not).
    pub waiting_since_ms: Arc<AtomicI64>,
}

/// The rating consumer.
pub struct Pipeline {
    consumer: Arc<StreamConsumer<RebalanceCounter>>,
    producer: FutureProducer,
    watermarks: Arc<BaseConsumer>,
    settings: Settings,
    topics: Topics,
    store: Arc<UsageStore>,
    ch: clickhouse::Client,
    metrics: Metrics,
    reference: SharedReference,
    progress: Progress,
    rebalances: Arc<AtomicU64>,
    /// Partitions assigned or revoked since the loop last looked (`-1`: unknown, all of them).
    moved: Arc<std::sync::Mutex<HashSet<i32>>>,
    seen_rebalances: u64,
    customers: FastMap<CustomerKey, Cached>,
    /// Σ of the cached customers' `bytes` (`rating.max_cached_bytes`).
    cached_bytes: usize,
    /// Checkpoints made durable so far.
    durable: u64,
    /// Rounds of eviction that dropped customers so far.
    evictions: u64,
    /// When resident memory near `rating.max_resident_bytes` last dropped customers: for `RESIDENT_SETTLE` after
    /// it, it drops nobody (the memory that round freed may not be back with the system yet).
    resident_settling: Option<Instant>,
    pending: Pending,
    reference_checked: Option<Instant>,
    /// The checkpoint being written; it gives back its rows' buffer, emptied.
    in_flight: Option<tokio::task::JoinHandle<anyhow::Result<EncodedRows>>>,
    /// Notified when the checkpoint in flight ends (written or failed).
    checkpoint_done: Arc<tokio::sync::Notify>,
    /// A buffer for the next checkpoint's rows (reused: a fresh one costs page faults as it grows).
    spare_rows: EncodedRows,
    /// Partitions owned since the last rebalance (unknown before the first).
    assigned: Option<HashSet<i32>>,
    /// Per usage partition, its end offset when the last reference barrier started: a message below it was
    /// appended before the barrier read the reference topics' ends, so the barrier covers what preceded it.
    reference_covers: HashMap<i32, i64>,
    /// Per usage partition, the offset after the last message read.
    positions: FastMap<i32, i64>,
    /// When the last checkpoint started.
    last_checkpoint: Instant,
    /// Stops the reference barrier's retries.
    shutdown: Shutdown,
    /// What [`rate::decode`] checks, from the configuration.
    limits: rate::Limits,
    /// Today by the wall clock (days since the epoch), read at the start of each batch: the day ids are counted on.
    today: u32,
}

impl Pipeline {
    /// Create the consumer (subscribed to `billing.usage`) and the dead-letter producer.
    pub fn new(
        settings: &Settings,
        store: UsageStore,
        ch: clickhouse::Client,
        metrics: Metrics,
        reference: SharedReference,
        progress: Progress,
    ) -> anyhow::Result<Self> {
        let rebalances = Arc::new(AtomicU64::new(0));
        let moved = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let consumer = kafka::consumer(
            &settings.kafka,
            &settings.rating.group_id,
            RebalanceCounter(rebalances.clone(), moved.clone()),
        )?;
        let topics = Topics::new(&settings.kafka);
        consumer.subscribe(&[&topics.usage])?;
        let watermarks: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .create()?;
        Ok(Pipeline {
            consumer: Arc::new(consumer),
            producer: kafka::producer(&settings.kafka)?,
            watermarks: Arc::new(watermarks),
            settings: settings.clone(),
            topics,
            store: Arc::new(store),
            ch,
            metrics,
            reference,
            progress,
            rebalances,
            moved,
            seen_rebalances: 0,
            customers: FastMap::default(),
            cached_bytes: 0,
            durable: 0,
            evictions: 0,
            resident_settling: None,
            pending: Pending::default(),
            reference_checked: None,
            in_flight: None,
            checkpoint_done: Arc::default(),
            spare_rows: EncodedRows::default(),
            assigned: None,
            reference_covers: HashMap::new(),
            positions: FastMap::default(),
            last_checkpoint: Instant::now(),
            shutdown: Shutdown::new(),
            limits: rate::Limits {
                max_event_bytes: settings.rating.max_event_bytes,
                max_future: chrono::Duration::from_std(settings.rating.max_future)
                    .unwrap_or(chrono::Duration::MAX),
                partitions: settings.kafka.partitions,
                late_usage_horizon: chrono::Duration::from_std(settings.rating.late_usage_horizon)
                    .unwrap_or(chrono::Duration::MAX),
                max_unique_values: settings.rating.max_unique_values,
            },
            today: usage_dedup::day_of(Utc::now()),
        })
    }

    /// Consume until shutdown, then checkpoint what is pending.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.shutdown = shutdown.clone();
        let mut ticker = tokio::time::interval(self.settings.rating.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Messages are rated as the consumer lends them (not copied: a copy of each message's key, payload, topic
        // and headers was 8 % of the loop). They borrow this handle, not `self`, so the loop can change its state
        // while it holds two batches; a batch's vector is reused once it is rated (growing a fresh one each batch
        // faulted in fresh pages).
        let consumer = self.consumer.clone();
        let mut spare: Vec<BorrowedMessage<'_>> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => self.on_tick().await?,
                // A tick that came while the last checkpoint was being written started nothing: the next one
                // starts as soon as it is durable, not a tick later (freshness is then one interval plus one write
                // at most, and checkpoints still start at most once per interval).
                _ = self.checkpoint_done.notified() => {
                    if self.last_checkpoint.elapsed() >= self.settings.rating.checkpoint_interval {
                        self.on_tick().await?;
                    }
                }
                msg = consumer.recv() => {
                    // Batches are pipelined: the customers of the batch just taken are loaded while the batch
                    // before it (whose customers are loaded) is rated. A batch is rated as soon as nothing more is
                    // waiting in the consumer, so a quiet topic is never kept waiting for the next message.
                    let mut next = Some(msg);
                    let mut ready: Option<Vec<BorrowedMessage<'_>>> = None;
                    while let Some(first) = next.take() {
                        let batch = take_batch(&consumer, first, std::mem::take(&mut spare));
                        let loads = self.start_loads(&batch);
                        if let Some(mut previous) = ready.take() {
                            self.rate_batch(&previous).await?;
                            previous.clear();
                            spare = previous;
                        }
                        self.finish_loads(loads).await?;
                        ready = Some(batch);
                        if shutdown.is_cancelled() {
                            break;
                        }
                        // Checkpoints keep their cadence however long the consumer has more to give.
                        if ticker.tick().now_or_never().is_some() {
                            self.on_tick().await?;
                        }
                        next = consumer.recv().now_or_never();
                    }
                    if let Some(last) = ready {
                        self.rate_batch(&last).await?;
                    }
                }
            }
        }
        self.checkpoint_now().await?;
        tracing::info!("rating stopped after a final checkpoint");
        Ok(())
    }

    /// Rate a batch whose customers are loaded, checkpointing whenever `rating.checkpoint_events` are pending.
    async fn rate_batch(&mut self, batch: &[BorrowedMessage<'_>]) -> anyhow::Result<()> {
        self.today = usage_dedup::day_of(Utc::now());
        for m in batch {
            self.on_message(m).await?;
            if self.pending.messages >= self.settings.rating.checkpoint_events {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Start loading, concurrently and in the background, the stored usage of every customer a batch names that is
    /// not cached yet. The customer is read from the message key (`tenant/customer`); a key that does not parse is
    /// simply loaded when its message is rated.
    fn start_loads(&self, batch: &[BorrowedMessage<'_>]) -> Option<Loads> {
        let missing: HashSet<CustomerKey> = batch
            .iter()
            .filter_map(|m| std::str::from_utf8(m.key()?).ok())
            .filter(|k| k.contains('/') && !self.customers.contains_key(*k))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let (store, shutdown, metrics) = (
            self.store.clone(),
            self.shutdown.clone(),
            self.metrics.clone(),
        );
        // Read together: one query per 64 customers of a tenant (`UsageStore::load_many`).
        let task = tokio::spawn(async move {
            let named: Vec<(&str, &str)> = missing
                .iter()
                .map(|k| k.split_once('/').expect("filtered"))
                .collect();
            let loaded = retry_store("customer loads", &shutdown, &metrics, || {
                store.load_many(&named)
            })
            .await?;
            anyhow::Ok(
                loaded
                    .into_iter()
                    .map(|((tenant, customer), usage)| (format!("{tenant}/{customer}"), usage))
                    .collect::<Vec<(CustomerKey, CustomerUsage)>>(),
            )
        });
        Some(Loads {
            task,
            rebalances: self.rebalances.load(Ordering::SeqCst),
            evictions: self.evictions,
        })
    }

    /// Wait for loads started by [`Self::start_loads`] and cache what they read. A customer cached meanwhile (loaded
    /// when one of its messages was rated) keeps its state. What was read is dropped, and read again when needed, if
    /// the group rebalanced meanwhile (it may predate the last writes of a partition's previous owner) or customers
    /// were evicted meanwhile (one may have been loaded, rated, written and evicted since: what was read is older).
    async fn finish_loads(&mut self, loads: Option<Loads>) -> anyhow::Result<()> {
        let Some(loads) = loads else {
            return Ok(());
        };
        let waited = Instant::now();
        let loaded = self.hold(loads.task).await??;
        self.waited("loads", waited);
        if self.rebalances.load(Ordering::SeqCst) != loads.rebalances
            || self.evictions != loads.evictions
        {
            self.metrics.discarded_loads.inc_by(loaded.len() as u64);
            return Ok(());
        }
        for (k, usage) in loaded {
            self.cache(k, usage);
        }
        Ok(())
    }

    /// Cache a customer just read from the store, weighed, unless it is cached already (its state is newer).
    fn cache(&mut self, key: CustomerKey, usage: CustomerUsage) {
        if let hashbrown::hash_map::Entry::Vacant(v) = self.customers.entry(key) {
            let cached = Cached::new(v.key(), usage, self.durable);
            self.cached_bytes += cached.bytes;
            v.insert(cached);
        }
    }

    /// Count the time since `since` that the consumer loop waited on the store `on` (`loads`, `checkpoint`).
    fn waited(&self, on: &str, since: Instant) {
        self.metrics
            .store_wait_seconds
            .with_label_values(&[on])
            .inc_by(since.elapsed().as_secs_f64());
    }

    /// Waits for `work` (a store call and its retries) while keeping the group membership: past [`HOLD_PAUSE`] the
    /// assigned partitions are paused and the consumer is polled (rebalances are served; a message it still returns
    /// is not lost: its partition is sought back to it), then everything is resumed. The wait is visible to
    /// `/health` (`rating.stuck_timeout`).
    async fn hold<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = tokio::time::sleep(HOLD_PAUSE) => {}
        }
        self.progress.waiting_since_ms.store(
            (Utc::now() - chrono::Duration::from_std(HOLD_PAUSE).unwrap_or_default())
                .timestamp_millis(),
            Ordering::Relaxed,
        );
        if let Ok(tpl) = self.consumer.assignment() {
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::warn!(error = %e, "pausing the partitions failed");
            }
        }
        tracing::warn!("waiting on a store: partitions paused, the consumer keeps polling");
        let mut rewind: HashMap<i32, i64> = HashMap::new();
        let out = loop {
            tokio::select! {
                biased;
                out = &mut work => break out,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        rewind.entry(m.partition()).or_insert(m.offset());
                    }
                    Err(e) => tracing::warn!(error = %e, "consumer error while paused"),
                }
            }
        };
        for (partition, offset) in rewind {
            if let Err(e) = self.consumer.seek(
                &self.topics.usage,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(partition, offset, error = %e, "seeking back after a pause failed");
            }
        }
        if let Ok(tpl) = self.consumer.assignment() {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(error = %e, "resuming the partitions failed");
            }
        }
        self.progress.waiting_since_ms.store(0, Ordering::Relaxed);
        tracing::info!("store answered: partitions resumed");
        out
    }

    async fn on_message(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        // After a rebalance a partition that changed hands may have had another owner: write out what we have
        // (writes are stamped, so stale ones lose) and forget the cached state of those partitions' customers, which
        // is reloaded from the store on next use. Partitions kept through the rebalance keep their customers.
        let generation = self.rebalances.load(Ordering::SeqCst);
        if generation != self.seen_rebalances {
            self.checkpoint_now().await?;
            let moved = std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()));
            let n = self.settings.kafka.partitions;
            let stale = |k: &CustomerKey| {
                moved.contains(&-1) || moved.contains(&kafka::partition_for_key(k.as_bytes(), n))
            };
            let mut dropped = 0;
            self.customers.retain(|k, c| {
                let keep = !stale(k);
                if !keep {
                    dropped += c.bytes;
                }
                keep
            });
            self.cached_bytes -= dropped;
            self.metrics
                .cached_customers
                .set(self.customers.len() as i64);
            self.seen_rebalances = generation;
            let assignment = self.consumer.assignment()?;
            self.assigned = Some(
                assignment
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect(),
            );
        }
        // Messages of a partition revoked while they sat in this batch belong to the new owner now.
        if self
            .assigned
            .as_ref()
            .is_some_and(|a| !a.contains(&m.partition()))
        {
            return Ok(());
        }
        // Usage may refer to customers and plans published just before it. Read the reference topics up to
        // their current end at least once a second, and again before rejecting an event as unknown.
        if self
            .reference_checked
            .is_none_or(|t| t.elapsed() >= REFERENCE_REFRESH)
        {
            self.catch_up_reference().await?;
        }
        let (partition, offset) = (m.partition(), m.offset());
        self.pending.offsets.insert(partition, offset + 1);
        self.positions.insert(partition, offset + 1);
        self.pending.messages += 1;
        let mut outcome = self.rate(m).await?;
        // Re-read only if the last barrier does not cover this event (broker offsets, no clock): a barrier that
        // started after the event was appended covers everything produced before it, so a flood of unknown events
        // costs one barrier, not one each.
        if !covered(&self.reference_covers, partition, offset)
            && matches!(
                outcome,
                Err(Rejection::UnknownMetric(_) | Rejection::Attribution(_))
            )
        {
            // These checks run before any state changes, so rating the event again is safe.
            self.catch_up_reference().await?;
            outcome = self.rate(m).await?;
        }
        if let Err(reason) = outcome {
            // A rejection of a customer in memory is kept with its checkpoint window, so that a replay rates the
            // event again instead of taking it for one the checkpoint applied.
            // (Only on its own partition: a record found on another one says nothing of the customer's offsets.)
            let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or_default();
            let own = kafka::partition_for_key(key.as_bytes(), self.settings.kafka.partitions);
            if own == partition && self.customers.contains_key(key) {
                self.pending.reject(key, (partition, offset));
            }
            self.dead_letter(m, &reason);
        }
        Ok(())
    }

    /// Read the reference topics up to their current ends. If they cannot be read (a broker away, a partition
    /// without leader), retry with backoff rather than stop: rating waits for its reference data, it never rates
    /// without it.
    async fn catch_up_reference(&mut self) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let caught_up = self.try_catch_up_reference().await;
            self.metrics
                .reference_barrier_seconds
                .observe(started.elapsed().as_secs_f64());
            match caught_up {
                Ok(covers) => {
                    self.reference_checked = Some(Instant::now());
                    self.reference_covers = covers;
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.reference_retries.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "reference topics not read to their end; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => anyhow::bail!("stopped while waiting for reference data: {e}"),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One barrier: first the usage partitions' end offsets (what the barrier will cover), then the reference
    /// topics read up to the ends they have after that.
    async fn try_catch_up_reference(&self) -> anyhow::Result<HashMap<i32, i64>> {
        let partitions: Vec<i32> = match &self.assigned {
            Some(a) => a.iter().copied().collect(),
            None => (0..self.settings.kafka.partitions).collect(),
        };
        let (client, topic) = (self.watermarks.clone(), self.topics.usage.clone());
        let covers = tokio::task::spawn_blocking(move || -> anyhow::Result<HashMap<i32, i64>> {
            let named: Vec<(&str, i32)> = partitions.iter().map(|p| (topic.as_str(), *p)).collect();
            let ends = kafka::offsets_at(&*client, &named, Offset::End, Duration::from_secs(5))?;
            Ok(ends.into_iter().map(|((_, p), end)| (p, end)).collect())
        })
        .await??;
        self.reference
            .catch_up(
                &self.watermarks,
                self.settings.kafka.partitions,
                &self.topics,
                self.settings.rating.reference_timeout,
            )
            .await?;
        Ok(covers)
    }

    /// Rate one message (see [`rate`]); the inner error is a rejection for the dead-letter topic.
    async fn rate(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<Result<(), Rejection>> {
        let message = rate::Message {
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            content_type: kafka::content_type(m),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            today: self.today,
        };
        let decoded = match rate::decode(&message, &self.limits) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        // `decode` checked that the key is the event's customer's.
        let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or_default();
        if !self.customers.contains_key(key) {
            let store = self.store.clone();
            let (t, c) = (
                decoded.event.tenant_id.clone(),
                decoded.event.customer_id.clone(),
            );
            let load = retry_store("customer load", &self.shutdown, &self.metrics, || {
                let (store, t, c) = (store.clone(), t.clone(), c.clone());
                async move { store.load(&t, &c).await }
            });
            let waited = Instant::now();
            let usage = self.hold(load).await?;
            self.waited("loads", waited);
            self.cache(key.to_owned(), usage);
        }
        let cached = self.customers.get_mut(key).expect("just loaded");
        cached.last_used = self.durable;
        let usage = &mut cached.usage;
        // Ids counted more than 40 days ago are forgotten, as the store's TTL forgets them.
        usage.seen.expire(self.today);
        let outcome = {
            let reference = self.reference.data.read().expect("reference lock");
            rate::apply(
                &decoded,
                &reference,
                usage,
                &mut cached.memo,
                m.partition(),
                m.offset(),
                &self.limits,
            )
        };
        let (counted, touched, new_unique) = match outcome {
            Err(r) => return Ok(Err(r)),
            Ok(Rated::Duplicate) => {
                self.metrics.outcomes.duplicate.inc();
                return Ok(Ok(()));
            }
            Ok(Rated::Replayed {
                counted,
                touched,
                new_unique,
            }) => {
                // ClickHouse already has this event from before the crash; aggregates it had not reached yet
                // were brought up to date and are written with the next checkpoint.
                self.metrics.outcomes.replayed.inc();
                (counted, touched, new_unique)
            }
            Ok(Rated::Accepted {
                counted,
                row,
                touched,
                new_unique,
                unpriced,
            }) => {
                self.pending.rows.push(&row);
                self.metrics.outcomes.accepted.inc();
                if unpriced {
                    self.metrics.unpriced_events.inc();
                }
                (counted, touched, new_unique)
            }
        };
        self.pending.mark(
            key,
            &decoded.event,
            (m.partition(), m.offset()),
            counted,
            touched,
            new_unique,
        );
        Ok(Ok(()))
    }

    fn dead_letter(&mut self, m: &BorrowedMessage<'_>, reason: &Rejection) {
        tracing::debug!(partition = m.partition(), offset = m.offset(), %reason, "dead-lettering usage event");
        let record = kafka::dead_letter_record(m, &self.topics.usage_dlq, &reason.to_string());
        // The checkpoint waits until it is delivered; one the producer will not queue now (its queue full, the
        // topic missing) is kept whole and sent again by the checkpoint, with backoff.
        let letter = match self.producer.send_result(record) {
            Ok(delivery) => DeadLetter::Queued(delivery),
            Err((e, record)) => {
                tracing::warn!(error = %e, "dead letter not queued; the checkpoint sends it again");
                self.metrics.dead_letters_unqueued.inc();
                DeadLetter::Unsent(Unsent::of(&record))
            }
        };
        self.pending.dead_letters.push(letter);
        self.metrics.outcomes.rejected.inc();
    }

    /// Start a checkpoint with what is pending, unless the previous one is still being written: then pending work
    /// keeps growing until it is durable (up to `rating.checkpoint_events`), so checkpoints grow while rating
    /// catches up, and stay small, one per `rating.checkpoint_interval`, when it is caught up.
    ///
    /// While rating is far behind (more than [`CATCH_UP_LAG`] events, by the usage partitions' end offsets the
    /// last reference barrier read), checkpoints are spaced by `rating.catch_up_interval` instead: each customer's
    /// changes are then written once for many of its events, which is what lets rating catch up.
    ///
    /// A checkpoint still being written after [`HOLD_PAUSE`] is a wait on a store like any other: `/health` sees it
    /// from the checkpoint's start (`rating.stuck_timeout`) until it is durable.
    async fn on_tick(&mut self) -> anyhow::Result<()> {
        if let Some(handle) = &self.in_flight {
            if !handle.is_finished() {
                if self.last_checkpoint.elapsed() > HOLD_PAUSE {
                    let started = Utc::now()
                        - chrono::Duration::from_std(self.last_checkpoint.elapsed())
                            .unwrap_or_default();
                    // Only the first time: a wait already recorded keeps its start.
                    let _ = self.progress.waiting_since_ms.compare_exchange(
                        0,
                        started.timestamp_millis(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Ok(());
            }
            self.wait_for_checkpoint().await?;
        }
        if self.pending.messages < self.settings.rating.checkpoint_events
            && self.last_checkpoint.elapsed() < self.settings.rating.catch_up_interval
            && self.behind() > CATCH_UP_LAG
        {
            return Ok(());
        }
        self.checkpoint().await
    }

    /// Events appended to the assigned partitions before the last reference barrier and not read yet.
    fn behind(&self) -> i64 {
        self.reference_covers
            .iter()
            .filter_map(|(p, end)| Some((end - self.positions.get(p)?).max(0)))
            .sum()
    }

    /// Hand everything applied so far to a background write that makes it durable and then commits the offsets
    /// it covers; consuming goes on meanwhile. At most one write is in flight: the previous one is awaited first,
    /// so checkpoints land in order. The order inside one matters: ClickHouse rows, then aggregates, then the
    /// dedup ids, so a crash anywhere leaves a state that replay repairs.
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        if self.pending.messages == 0 {
            return Ok(());
        }
        self.wait_for_checkpoint().await?;
        self.last_checkpoint = Instant::now();
        let mut pending = std::mem::take(&mut self.pending);
        // The next checkpoint's rows go in the chunks the previous checkpoint gave back (already allocated and
        // touched: fresh pages cost the kernel's zeroing).
        self.pending.rows = std::mem::take(&mut self.spare_rows);
        // The changed customers weighed again (their aggregates, unique values and ids grew).
        for key in pending.customers.keys() {
            if let Some(c) = self.customers.get_mut(key) {
                let bytes = c.weigh(key);
                self.cached_bytes = self.cached_bytes - c.bytes + bytes;
                c.bytes = bytes;
            }
        }
        // One write per changed customer: its changed aggregates (with their new unique values) and its new ids.
        let writes: Vec<CustomerWrite> = pending
            .customers
            .drain()
            .map(|(key, mut changes)| {
                let usage = self.customers.get(&key).map(|c| &c.usage);
                let aggregates = changes
                    .dirty
                    .iter()
                    .filter_map(|i| {
                        let (key, state) = usage?.aggregates.get_index(i)?;
                        let unique = changes.new_unique.remove(&i).unwrap_or_default();
                        Some((key.clone(), state.without_unique(), unique))
                    })
                    .collect();
                CustomerWrite {
                    window: changes.window(),
                    tenant: changes.tenant,
                    customer: changes.customer,
                    aggregates,
                    seen: changes.seen,
                    block_id: uuid::Uuid::new_v4(),
                }
            })
            .collect();
        self.metrics
            .checkpoint_events
            .observe(pending.messages as f64);
        self.metrics
            .checkpoint_customers
            .observe(writes.len() as f64);
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in &pending.offsets {
            tpl.add_partition_offset(&self.topics.usage, *partition, Offset::Offset(*next))?;
        }
        let (producer, store, ch, consumer, metrics, progress, shutdown) = (
            self.producer.clone(),
            self.store.clone(),
            self.ch.clone(),
            self.consumer.clone(),
            self.metrics.clone(),
            self.progress.clone(),
            self.shutdown.clone(),
        );
        let done = self.checkpoint_done.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let written = async move {
                let started = Instant::now();
                let step = |name: &str, since: Instant| {
                    metrics
                        .checkpoint_step_seconds
                        .with_label_values(&[name])
                        .observe(since.elapsed().as_secs_f64());
                    Instant::now()
                };
                for letter in pending.dead_letters {
                    deliver_dead_letter(&producer, letter, &shutdown, &metrics).await?;
                }
                // A store that is down or hangs is waited for, with a timeout per attempt and backoff: every write is
                // idempotent (absolute values, stamped; ClickHouse collapses duplicates), so a retry is harmless, and
                // the offsets are committed only after all of them.
                let at = step("dead_letters", started);
                retry_store("clickhouse insert", &shutdown, &metrics, || {
                    usage_events::insert_encoded(&ch, &pending.rows)
                })
                .await?;
                let at = step("clickhouse", at);
                retry_store("usage checkpoint", &shutdown, &metrics, || {
                    store.save_checkpoint(&writes)
                })
                .await?;
                step("scylla", at);
                // Offsets are a resume hint: a failed commit (e.g. for a partition just revoked) only means a
                // replay, which the per-row offsets and the dedup ids make harmless.
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "offset commit failed");
                }
                progress
                    .last_checkpoint_ms
                    .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
                metrics.checkpoints.inc();
                metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                pending.rows.clear();
                Ok(pending.rows)
            }
            .await;
            done.notify_one();
            written
        }));
        Ok(())
    }

    /// Wait until the checkpoint in flight, if any, is durable; its error, if any, stops the pipeline.
    async fn wait_for_checkpoint(&mut self) -> anyhow::Result<()> {
        if let Some(handle) = self.in_flight.take() {
            let waited = Instant::now();
            self.spare_rows = self.hold(handle).await??;
            self.waited("checkpoint", waited);
            self.progress.waiting_since_ms.store(0, Ordering::Relaxed);
            self.durable += 1;
            self.evict();
        }
        Ok(())
    }

    /// Past `rating.max_cached_customers` customers or `rating.max_cached_bytes` of their usage (by estimate), drop
    /// the customers used least recently whose state is all durable (nothing pending since the checkpoint just made
    /// durable), down to 90 % of both bounds. They are reloaded from the store when next used, with their dedup ids
    /// as the store keeps them (40 days). Past 90 % of `rating.max_resident_bytes` of resident memory, the usage
    /// bound is, for this round, the cached usage less what the process takes over 80 % of it
    /// ([`resident_usage_bound`]): the rest is room for what rating loads and buffers until the next checkpoint (at
    /// a million customers, about 100 MiB between two catch-up checkpoints).
    fn evict(&mut self) {
        let max = self.settings.rating.max_cached_customers;
        let mut max_bytes = self.settings.rating.max_cached_bytes;
        let resident = billing_runtime::process::resident_bytes();
        let mut resident_round = false;
        if let Some(rss) = resident {
            self.metrics.resident_bytes.set(rss as i64);
            let settled = self
                .resident_settling
                .is_none_or(|t| t.elapsed() >= RESIDENT_SETTLE);
            let limit = self.settings.rating.max_resident_bytes;
            if settled && rss > limit / 10 * 9 {
                max_bytes =
                    max_bytes.min(resident_usage_bound(self.cached_bytes, rss, limit / 10 * 8));
                self.resident_settling = Some(Instant::now());
                resident_round = true;
            }
        }
        if self.customers.len() > max || self.cached_bytes > max_bytes {
            let pending = &self.pending.customers;
            let mut idle: Vec<(u64, CustomerKey)> = self
                .customers
                .iter()
                .filter(|(k, _)| !pending.contains_key(*k))
                .map(|(k, c)| (c.last_used, k.clone()))
                .collect();
            idle.sort_unstable();
            let mut dropped = 0;
            for (_, k) in idle {
                if self.customers.len() <= max / 10 * 9 && self.cached_bytes <= max_bytes / 10 * 9 {
                    break;
                }
                if let Some(c) = self.customers.remove(&k) {
                    self.cached_bytes -= c.bytes;
                    dropped += 1;
                }
            }
            if dropped > 0 {
                self.evictions += 1;
            }
            self.metrics.evicted_customers.inc_by(dropped);
        }
        if resident_round && self.cached_bytes >= max_bytes / 10 * 9 {
            // Only customers with pending changes are left, or none at all: the rest of the process takes most of
            // `rating.max_resident_bytes` (at most one warning per RESIDENT_SETTLE).
            tracing::warn!(
                resident = ?resident,
                max_resident_bytes = self.settings.rating.max_resident_bytes,
                cached_bytes = self.cached_bytes,
                cached_customers = self.customers.len(),
                "resident memory near rating.max_resident_bytes with every idle customer dropped"
            );
        }
        self.metrics
            .cached_customers
            .set(self.customers.len() as i64);
        self.metrics.cached_bytes.set(self.cached_bytes as i64);
    }

    /// Checkpoint and wait until it is durable.
    async fn checkpoint_now(&mut self) -> anyhow::Result<()> {
        self.checkpoint().await?;
        self.wait_for_checkpoint().await
    }
}

/// Measures how far behind rating's group is, through the pipeline's own consumer (a second group-bound client
/// in the process would stall other consumers while it fetches committed offsets).
pub struct LagProbe {
    consumer: Arc<StreamConsumer<RebalanceCounter>>,
    topic: String,
    partitions: i32,
}

impl LagProbe {
    /// Σ (end offset − committed offset) over the usage partitions (blocking).
    pub fn lag(&self) -> Result<i64, String> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        let mut lag = 0;
        for e in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            lag += (high - from).max(0);
        }
        Ok(lag)
    }
}

impl Pipeline {
    /// A lag probe sharing this pipeline's consumer.
    pub fn lag_probe(&self) -> LagProbe {
        LagProbe {
            consumer: self.consumer.clone(),
            topic: self.topics.usage.clone(),
            partitions: self.settings.kafka.partitions,
        }
    }
}

/// How long one attempt of a checkpoint write may take.
const STORE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Run an idempotent store write until it succeeds: each attempt bounded by [`STORE_ATTEMPT_TIMEOUT`], then a
/// backoff from 200 ms to 10 s. Gives up only when the process is asked to stop (the offsets are then not
/// committed, so a restart replays what this checkpoint covered).
async fn retry_store<T, F, Fut>(
    what: &str,
    shutdown: &Shutdown,
    metrics: &Metrics,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        let error = match tokio::time::timeout(STORE_ATTEMPT_TIMEOUT, attempt()).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {STORE_ATTEMPT_TIMEOUT:?}"),
        };
        metrics.store_retries.inc();
        tracing::warn!(what, error, retry_in = ?backoff, "store call failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("{what} failed and the process is stopping: {error}"),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A dead letter on its way: queued in the producer, or still to be sent.
enum DeadLetter {
    Queued(rdkafka::producer::DeliveryFuture),
    Unsent(Unsent),
}

/// The message just received and what else the consumer has already fetched, up to [`PREFETCH_BATCH`], in
/// `batch` (empty; its capacity is reused).
fn take_batch<'c>(
    consumer: &'c StreamConsumer<RebalanceCounter>,
    first: KafkaResult<BorrowedMessage<'c>>,
    mut batch: Vec<BorrowedMessage<'c>>,
) -> Vec<BorrowedMessage<'c>> {
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        match msg {
            Ok(m) => batch.push(m),
            Err(e) => tracing::warn!(error = %e, "consumer error"),
        }
        if batch.len() < PREFETCH_BATCH {
            next = consumer.recv().now_or_never();
        }
    }
    batch
}

/// A dead letter kept whole because the producer refused to queue it or gave up delivering it.
struct Unsent {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<rdkafka::message::OwnedHeaders>,
}

impl Unsent {
    fn of(record: &rdkafka::producer::FutureRecord<'_, [u8], [u8]>) -> Self {
        Unsent {
            topic: record.topic.to_owned(),
            key: record.key.map(<[u8]>::to_vec),
            payload: record.payload.map(<[u8]>::to_vec),
            headers: record.headers.clone(),
        }
    }

    fn of_message(m: &OwnedMessage) -> Self {
        Unsent {
            topic: m.topic().to_owned(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m.headers().cloned(),
        }
    }

    fn record(&self) -> rdkafka::producer::FutureRecord<'_, [u8], [u8]> {
        let mut record = rdkafka::producer::FutureRecord::to(&self.topic);
        record.key = self.key.as_deref();
        record.payload = self.payload.as_deref();
        record.headers = self.headers.clone();
        record
    }
}

/// Wait until a dead letter is acknowledged. One the producer gave up on (the broker or the topic away longer than
/// `kafka.message_timeout`) or would not queue is sent again, with backoff (each attempt counted in
/// `store_retries`), until it is acknowledged or the process stops (then the checkpoint's offsets are not
/// committed, and a restart dead-letters the record again).
async fn deliver_dead_letter(
    producer: &FutureProducer,
    mut letter: DeadLetter,
    shutdown: &Shutdown,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let unsent = match letter {
            DeadLetter::Queued(delivery) => match delivery.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err((e, failed))) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "dead-letter delivery failed; sending it again");
                    Unsent::of_message(&failed)
                }
                Err(_) => anyhow::bail!("dead-letter delivery was cancelled"),
            },
            DeadLetter::Unsent(unsent) => unsent,
        };
        metrics.store_retries.inc();
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("a dead letter was not delivered and the process is stopping"),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        let queued = producer.send_result(unsent.record()).map_err(|(e, _)| e);
        letter = match queued {
            Ok(delivery) => DeadLetter::Queued(delivery),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "dead letter not queued; retrying");
                metrics.dead_letters_unqueued.inc();
                DeadLetter::Unsent(unsent)
            }
        };
    }
}

/// Whether the last reference barrier covers a message: it started after the message was appended.
fn covered(covers: &HashMap<i32, i64>, partition: i32, offset: i64) -> bool {
    covers.get(&partition).is_some_and(|end| offset < *end)
}

/// How long the loop has been waiting on a store, if it is.
pub fn waiting_for(progress: &Progress) -> Option<chrono::Duration> {
    let ms = progress.waiting_since_ms.load(Ordering::Relaxed);
    let since: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single()?;
    (ms > 0).then(|| Utc::now() - since)
}

/// The time of the last productive checkpoint, for the stall check.
pub fn since_progress(progress: &Progress) -> Option<chrono::Duration> {
    let ms = progress.last_checkpoint_ms.load(Ordering::Relaxed);
    let last: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single()?;
    (ms > 0).then(|| Utc::now() - last)
}

/// The cached usage (by estimate) that brings a process of `resident` bytes down to `target`: what is cached less
/// the excess. The estimate is below what the usage really takes (allocator overhead), so dropping that much frees at
/// least the excess; the rest of the process (reference data, Kafka's buffers) cannot be dropped, so a bound below
/// it leaves the idle customers none.
fn resident_usage_bound(cached_bytes: usize, resident: usize, target: usize) -> usize {
    cached_bytes.saturating_sub(resident.saturating_sub(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_over_its_bound_takes_the_excess_from_the_cached_usage() {
        const MIB: usize = 1 << 20;
        assert_eq!(
            resident_usage_bound(500 * MIB, 1_700 * MIB, 1_536 * MIB),
            336 * MIB
        );
        // Under the bound, nothing is taken (the caller only asks past it).
        assert_eq!(
            resident_usage_bound(500 * MIB, 1_000 * MIB, 1_536 * MIB),
            500 * MIB
        );
        // An excess larger than the cache leaves it nothing.
        assert_eq!(resident_usage_bound(100 * MIB, 2_000 * MIB, 1_536 * MIB), 0);
    }

    #[test]
    fn an_index_set_holds_each_index_once_in_order() {
        let mut set = IndexSet::default();
        for i in [130, 0, 63, 64, 0, 130, 7] {
            set.insert(i);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 7, 63, 64, 130]);
        assert_eq!(IndexSet::default().iter().count(), 0);
    }

    #[test]
    fn a_barrier_covers_only_what_was_appended_before_it_started() {
        let covers = HashMap::from([(0, 10), (1, 0)]);
        assert!(covered(&covers, 0, 9));
        assert!(
            !covered(&covers, 0, 10),
            "appended after the barrier started"
        );
        assert!(!covered(&covers, 1, 0));
        assert!(
            !covered(&covers, 2, 0),
            "a partition the barrier did not look at"
        );
    }
}
