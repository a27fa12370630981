//! rating's Prometheus metrics, each defined once here.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// The service's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// Exported by `/metrics`.
    pub registry: Registry,
    /// Events by outcome: `accepted`, `rejected` (dead-lettered), `duplicate` or `replayed` (already counted).
    pub events: IntCounterVec,
    /// `events` of each outcome, looked up once (every event counts in one).
    pub outcomes: Outcomes,
    /// Checkpoints written.
    pub checkpoints: IntCounter,
    /// Time to make one checkpoint durable.
    pub checkpoint_seconds: Histogram,
    /// Time of each step of a checkpoint: `dead_letters`, `clickhouse`, `scylla` (retries included).
    pub checkpoint_step_seconds: HistogramVec,
    /// Events one checkpoint covers.
    pub checkpoint_events: Histogram,
    /// Customers one checkpoint writes.
    pub checkpoint_customers: Histogram,
    /// Reference barriers that failed and were retried.
    pub reference_retries: IntCounter,
    /// Time of each reference barrier (end offsets read, reference topics read up to them), which the consumer
    /// loop waits for.
    pub reference_barrier_seconds: Histogram,
    /// Reference events folded since the start, by topic (`catalog`, `lifecycle`): a start from a snapshot folds
    /// only the lifecycle events after it.
    pub reference_events: IntCounterVec,
    /// Snapshots of the lifecycle state by outcome: `written`, `failed`, `skipped` (one of the same positions was there).
    pub reference_snapshots: IntCounterVec,
    /// Bytes of the last snapshot taken.
    pub reference_snapshot_bytes: IntGauge,
    /// Checkpoint writes that failed (or hung) and were retried.
    pub store_retries: IntCounter,
    /// Dead letters the producer refused to queue (its queue full, the topic known missing), kept to send again.
    pub dead_letters_unqueued: IntCounter,
    /// Customers whose usage is in memory.
    pub cached_customers: IntGauge,
    /// Memory of the cached customers' usage by estimate, in bytes (`rating.max_cached_bytes`).
    pub cached_bytes: IntGauge,
    /// Customers dropped from memory (`rating.max_cached_customers`, `rating.max_cached_bytes`,
    /// `rating.max_resident_bytes`).
    pub evicted_customers: IntCounter,
    /// The process's resident memory (RSS) at the last durable checkpoint, in bytes (`rating.max_resident_bytes`).
    pub resident_bytes: IntGauge,
    /// Customers whose background load was dropped unused, because the group rebalanced or customers were evicted
    /// while it ran (what it read may be older than the store); each is read again when its event is rated.
    pub discarded_loads: IntCounter,
    /// Accepted events with a charge that running usage cannot price (their ClickHouse amount leaves it out).
    pub unpriced_events: IntCounter,
    /// Time the consumer loop spent waiting on the store instead of rating: `loads` (customers read before their
    /// events can be rated) and `checkpoint` (the checkpoint in flight, when the next one must start).
    pub store_wait_seconds: CounterVec,
}

/// The series of `billing_rating_events_total`.
#[derive(Clone)]
pub struct Outcomes {
    /// Counted now.
    pub accepted: IntCounter,
    /// Dead-lettered.
    pub rejected: IntCounter,
    /// Its id was counted before.
    pub duplicate: IntCounter,
    /// Counted before a crash; aggregates brought up to date.
    pub replayed: IntCounter,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("billing_rating".into()), None)?;
        let events = IntCounterVec::new(
            Opts::new("events_total", "Usage events consumed, by outcome"),
            &["outcome"],
        )?;
        let checkpoints = IntCounter::new("checkpoints_total", "Checkpoints made durable")?;
        let checkpoint_seconds = Histogram::with_opts(HistogramOpts::new(
            "checkpoint_seconds",
            "Time to write a checkpoint to ClickHouse and ScyllaDB and commit offsets",
        ))?;
        let checkpoint_step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "checkpoint_step_seconds",
                "Time of each step of a checkpoint, retries included: dead_letters, clickhouse, scylla",
            ),
            &["step"],
        )?;
        registry.register(Box::new(checkpoint_step_seconds.clone()))?;
        let sizes = prometheus::exponential_buckets(10.0, 4.0, 9)?;
        let checkpoint_events = Histogram::with_opts(
            HistogramOpts::new("checkpoint_events", "Events one checkpoint covers")
                .buckets(sizes.clone()),
        )?;
        registry.register(Box::new(checkpoint_events.clone()))?;
        let checkpoint_customers = Histogram::with_opts(
            HistogramOpts::new("checkpoint_customers", "Customers one checkpoint writes")
                .buckets(sizes),
        )?;
        registry.register(Box::new(checkpoint_customers.clone()))?;
        let reference_retries = IntCounter::new(
            "reference_retries_total",
            "Reads of the reference topics to their end that failed and were retried",
        )?;
        registry.register(Box::new(reference_retries.clone()))?;
        let reference_barrier_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "reference_barrier_seconds",
                "Time of each read of the reference topics up to their ends, which rating waits for",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )?;
        registry.register(Box::new(reference_barrier_seconds.clone()))?;
        let reference_events = IntCounterVec::new(
            Opts::new(
                "reference_events_total",
                "Reference events folded since the start, by topic (catalog, lifecycle)",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(reference_events.clone()))?;
        let reference_snapshots = IntCounterVec::new(
            Opts::new(
                "reference_snapshots_total",
                "Snapshots of the lifecycle state, by outcome: written, failed, skipped (one of the same positions was there)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(reference_snapshots.clone()))?;
        let reference_snapshot_bytes = IntGauge::new(
            "reference_snapshot_bytes",
            "Bytes of the last lifecycle snapshot taken",
        )?;
        registry.register(Box::new(reference_snapshot_bytes.clone()))?;
        let store_retries = IntCounter::new(
            "store_retries_total",
            "Checkpoint writes to ScyllaDB or ClickHouse that failed or timed out and were retried",
        )?;
        registry.register(Box::new(store_retries.clone()))?;
        let dead_letters_unqueued = IntCounter::new(
            "dead_letters_unqueued_total",
            "Dead letters the producer refused to queue (queue full, topic missing): kept whole and sent again",
        )?;
        registry.register(Box::new(dead_letters_unqueued.clone()))?;
        let cached_customers =
            IntGauge::new("cached_customers", "Customers whose usage is in memory")?;
        registry.register(Box::new(cached_customers.clone()))?;
        let cached_bytes = IntGauge::new(
            "cached_bytes",
            "Memory of the cached customers' usage by estimate (aggregates, unique values, dedup ids), in bytes",
        )?;
        registry.register(Box::new(cached_bytes.clone()))?;
        let evicted_customers = IntCounter::new(
            "evicted_customers_total",
            "Customers dropped from memory past rating.max_cached_customers, rating.max_cached_bytes or rating.max_resident_bytes",
        )?;
        registry.register(Box::new(evicted_customers.clone()))?;
        let resident_bytes = IntGauge::new(
            "resident_bytes",
            "The process's resident memory (RSS) at the last durable checkpoint, in bytes",
        )?;
        registry.register(Box::new(resident_bytes.clone()))?;
        let discarded_loads = IntCounter::new(
            "discarded_loads_total",
            "Customers loaded ahead whose state was dropped unused: the group rebalanced or customers were evicted meanwhile",
        )?;
        registry.register(Box::new(discarded_loads.clone()))?;
        let unpriced_events = IntCounter::new(
            "unpriced_events_total",
            "Accepted events counting for a charge that running usage cannot price (per-event options): their \
             ClickHouse amount leaves that charge out",
        )?;
        registry.register(Box::new(unpriced_events.clone()))?;
        let store_wait_seconds = CounterVec::new(
            Opts::new(
                "store_wait_seconds_total",
                "Time the consumer loop waited on the store instead of rating: loads (customers read before \
                 their events are rated), checkpoint (the checkpoint in flight, before the next one starts)",
            ),
            &["on"],
        )?;
        registry.register(Box::new(store_wait_seconds.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(checkpoints.clone()))?;
        registry.register(Box::new(checkpoint_seconds.clone()))?;
        let outcome = |o: &str| events.with_label_values(&[o]);
        let outcomes = Outcomes {
            accepted: outcome("accepted"),
            rejected: outcome("rejected"),
            duplicate: outcome("duplicate"),
            replayed: outcome("replayed"),
        };
        Ok(Metrics {
            registry,
            events,
            outcomes,
            checkpoints,
            checkpoint_seconds,
            checkpoint_step_seconds,
            checkpoint_events,
            checkpoint_customers,
            reference_retries,
            reference_barrier_seconds,
            reference_events,
            reference_snapshots,
            reference_snapshot_bytes,
            store_retries,
            dead_letters_unqueued,
            cached_customers,
            cached_bytes,
            evicted_customers,
            resident_bytes,
            discarded_loads,
            unpriced_events,
            store_wait_seconds,
        })
    }
}
