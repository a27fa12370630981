//! The webhooks service's Prometheus metrics, each defined once here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The service's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// Exported by `/metrics`.
    pub registry: Registry,
    /// Source events read, by outcome: `mapped` (a webhook event), `skipped` (no webhook type: clock ticks,
    /// commands) or `undecodable` (not a datum of the topic's schema; logged and skipped).
    pub source_events: IntCounterVec,
    /// Deliveries created (one per event and subscribed endpoint).
    pub deliveries: IntCounter,
    /// HTTP attempts by outcome: `delivered`, `http_error` (a non-2xx), `timeout` or `connection_error`.
    pub attempts: IntCounterVec,
    /// Deliveries ended as `failed` (retry window over, endpoint deleted or disabled).
    pub failed: IntCounter,
    /// Seconds from sending an attempt to its answer (or error).
    pub latency: Histogram,
    /// Store writes or reads that failed and were retried.
    pub store_retries: IntCounter,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("billing_webhooks".into()), None)?;
        let source_events = IntCounterVec::new(
            Opts::new("source_events_total", "Source events read, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(source_events.clone()))?;
        let deliveries = IntCounter::new("deliveries_total", "Deliveries created")?;
        registry.register(Box::new(deliveries.clone()))?;
        let attempts = IntCounterVec::new(
            Opts::new("attempts_total", "HTTP delivery attempts, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(attempts.clone()))?;
        let failed = IntCounter::new("deliveries_failed_total", "Deliveries given up")?;
        registry.register(Box::new(failed.clone()))?;
        let latency = Histogram::with_opts(HistogramOpts::new(
            "attempt_seconds",
            "Seconds from sending an attempt to its answer",
        ))?;
        registry.register(Box::new(latency.clone()))?;
        let store_retries = IntCounter::new(
            "store_retries_total",
            "Store requests that failed and were retried",
        )?;
        registry.register(Box::new(store_retries.clone()))?;
        Ok(Metrics {
            registry,
            source_events,
            deliveries,
            attempts,
            failed,
            latency,
            store_retries,
        })
    }
}
