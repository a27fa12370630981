//! rating's Prometheus metrics, each defined once here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The service's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// Exported by `/metrics`.
    pub registry: Registry,
    /// Events by outcome: `accepted`, `rejected` (dead-lettered) or `replayed` (already counted).
    pub events: IntCounterVec,
    /// Checkpoints written.
    pub checkpoints: IntCounter,
    /// Time to make one checkpoint durable.
    pub checkpoint_seconds: Histogram,
    /// Reference barriers that failed and were retried.
    pub reference_retries: IntCounter,
    /// Checkpoint writes that failed (or hung) and were retried.
    pub store_retries: IntCounter,
    /// Customers whose usage is in memory.
    pub cached_customers: IntGauge,
    /// Customers dropped from memory (`rating.max_cached_customers`).
    pub evicted_customers: IntCounter,
    /// Accepted events with a charge that running usage cannot price (their ClickHouse amount leaves it out).
    pub unpriced_events: IntCounter,
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
        let reference_retries = IntCounter::new(
            "reference_retries_total",
            "Reads of the reference topics to their end that failed and were retried",
        )?;
        registry.register(Box::new(reference_retries.clone()))?;
        let store_retries = IntCounter::new(
            "store_retries_total",
            "Checkpoint writes to ScyllaDB or ClickHouse that failed or timed out and were retried",
        )?;
        registry.register(Box::new(store_retries.clone()))?;
        let cached_customers =
            IntGauge::new("cached_customers", "Customers whose usage is in memory")?;
        registry.register(Box::new(cached_customers.clone()))?;
        let evicted_customers = IntCounter::new(
            "evicted_customers_total",
            "Customers dropped from memory past rating.max_cached_customers",
        )?;
        registry.register(Box::new(evicted_customers.clone()))?;
        let unpriced_events = IntCounter::new(
            "unpriced_events_total",
            "Accepted events counting for a charge that running usage cannot price (per-event options): their \
             ClickHouse amount leaves that charge out",
        )?;
        registry.register(Box::new(unpriced_events.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(checkpoints.clone()))?;
        registry.register(Box::new(checkpoint_seconds.clone()))?;
        Ok(Metrics {
            registry,
            events,
            checkpoints,
            checkpoint_seconds,
            reference_retries,
            store_retries,
            cached_customers,
            evicted_customers,
            unpriced_events,
        })
    }
}
