//! The invoicer's Prometheus metrics, each defined once here.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The service's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// Exported by `/metrics`.
    pub registry: Registry,
    /// Lifecycle events by outcome: `applied` or `refused` (dead-lettered).
    pub lifecycle: IntCounterVec,
    /// Invoices written by status: `draft` (written or refreshed) or `finalized`.
    pub invoices: IntCounterVec,
    /// Lifecycle events whose handling failed (a store or the broker unavailable) and was retried.
    pub retries: IntCounter,
    /// Credit note requests by outcome: `issued` or `rejected`.
    pub credit_notes: IntCounterVec,
    /// Void requests by outcome: `voided` or `rejected`.
    pub voids: IntCounterVec,
    /// Lifecycle events waiting on the partitions this instance owns (end offset − next offset to handle): what an
    /// autoscaler scales the invoicer on (`deploy/k8s/autoscaling.yaml`; the group commits no offsets, so the
    /// broker's consumer lag says nothing).
    pub lifecycle_lag: IntGauge,
    /// Analytics writes to ClickHouse that failed and were retried, by fact: `mrr` or `payments`.
    pub analytics_retries: IntCounterVec,
    /// Subscriptions whose new MRR waits to be written to ClickHouse.
    pub mrr_pending: IntGauge,
}

/// The registry's prefix: every metric is `billing_invoicer_<name>`.
pub const PREFIX: &str = "billing_invoicer";

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
        let lifecycle = IntCounterVec::new(
            Opts::new(
                "lifecycle_events_total",
                "Lifecycle events applied, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(lifecycle.clone()))?;
        let invoices = IntCounterVec::new(
            Opts::new("invoices_total", "Invoices written, by status"),
            &["status"],
        )?;
        registry.register(Box::new(invoices.clone()))?;
        let retries = IntCounter::new(
            "retries_total",
            "Lifecycle events whose handling failed and was retried",
        )?;
        registry.register(Box::new(retries.clone()))?;
        let credit_notes = IntCounterVec::new(
            Opts::new(
                "credit_notes_total",
                "Credit note requests handled, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(credit_notes.clone()))?;
        let voids = IntCounterVec::new(
            Opts::new("voids_total", "Invoice void requests handled, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(voids.clone()))?;
        let lifecycle_lag = IntGauge::new(
            "lifecycle_lag",
            "Lifecycle events waiting on the partitions this instance owns",
        )?;
        registry.register(Box::new(lifecycle_lag.clone()))?;
        let analytics_retries = IntCounterVec::new(
            Opts::new(
                "analytics_retries_total",
                "Analytics writes to ClickHouse retried, by fact",
            ),
            &["fact"],
        )?;
        registry.register(Box::new(analytics_retries.clone()))?;
        let mrr_pending = IntGauge::new(
            "mrr_pending",
            "Subscriptions whose new MRR waits to be written to ClickHouse",
        )?;
        registry.register(Box::new(mrr_pending.clone()))?;
        Ok(Metrics {
            registry,
            lifecycle,
            invoices,
            retries,
            credit_notes,
            voids,
            lifecycle_lag,
            analytics_retries,
            mrr_pending,
        })
    }
}
