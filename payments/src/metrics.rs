//! The payments service's Prometheus metrics, each defined once here.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The service's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// Exported by `/metrics`.
    pub registry: Registry,
    /// Charge attempts ended, by outcome: `succeeded` or `failed`.
    pub attempts: IntCounterVec,
    /// Provider calls made (retries of a transient error included).
    pub provider_calls: IntCounter,
    /// Invoices given up by dunning.
    pub uncollectible: IntCounter,
    /// Actions that failed (a store, the broker or the provider unavailable) and run again.
    pub failures: IntCounter,
    /// Events that could not be decoded and were skipped.
    pub skipped: IntCounter,
    /// Store writes and publishes that failed or timed out and were tried again.
    pub io_retries: IntCounter,
    /// Credit note refunds ended, by outcome.
    pub refunds: IntCounterVec,
    /// Credit balance applications published.
    pub credits_applied: IntCounter,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("billing_payments".into()), None)?;
        let attempts = IntCounterVec::new(
            Opts::new("attempts_total", "Charge attempts ended, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(attempts.clone()))?;
        let refunds = IntCounterVec::new(
            Opts::new("refunds_total", "Credit note refunds ended, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(refunds.clone()))?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Metrics {
            provider_calls: counter("provider_calls_total", "Provider calls made")?,
            uncollectible: counter("uncollectible_total", "Invoices given up by dunning")?,
            failures: counter("action_failures_total", "Actions that failed and run again")?,
            skipped: counter("skipped_events_total", "Undecodable events skipped")?,
            credits_applied: counter(
                "credits_applied_total",
                "Credit balance applications published",
            )?,
            io_retries: counter(
                "io_retries_total",
                "Store writes and publishes that failed or timed out",
            )?,
            attempts,
            refunds,
            registry,
        })
    }
}
