//! rating's Prometheus metrics, each defined once here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

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
        })
    }
}
