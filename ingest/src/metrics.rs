//! The gateway's metrics, each defined once here (registry prefix `billing_ingest`).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Counters and timings of `POST /v1/events`.
#[derive(Clone)]
pub struct Metrics {
    /// Events by outcome: `accepted` (acknowledged by Kafka), `rejected` (invalid), `failed` (Kafka error).
    pub events: IntCounterVec,
    /// Time from request to answer, including the wait for broker acknowledgements.
    pub request_seconds: Histogram,
}

impl Metrics {
    /// Create the metrics and register them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new("events_total", "Usage events received, by outcome"),
            &["outcome"],
        )?;
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "request_seconds",
                "POST /v1/events latency, including the wait for broker acknowledgements",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        // Make every outcome visible at zero before the first request.
        for outcome in ["accepted", "rejected", "failed"] {
            events.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            events,
            request_seconds,
        })
    }
}
