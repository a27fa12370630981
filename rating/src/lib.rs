//! rating: consumes `billing.usage`, validates and decodes each event, sums it into per-customer usage totals in
//! ScyllaDB, and records every accepted event in ClickHouse. Bad messages go to `billing.usage.dlq`.
//!
//! Exactly-once effects over at-least-once delivery: totals are kept in memory and checkpointed as absolute
//! values, each row stamped with the Kafka offset of the last event it includes. A replayed event whose offset is
//! not above its row's offset is skipped, and rows are written `USING TIMESTAMP offset + 1`, so a stale writer
//! (an old owner after a rebalance) can never overwrite newer totals. Kafka offsets are committed after the
//! writes they cover and are only a hint for where to resume.

mod metrics;
mod pipeline;
mod store;
mod validate;

use billing_runtime::health::{self, Readiness};
use billing_runtime::{clickhouse, cql, kafka, Settings, Shutdown};

pub use metrics::Metrics;
pub use validate::Rejection;

/// Run rating until `shutdown`; returns after the final checkpoint.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let session = std::sync::Arc::new(cql::connect(&settings.cassandra).await?);
    let ch = clickhouse::client(&settings.clickhouse);
    let store =
        store::Store::new(session.clone(), ch.clone(), &settings.cassandra.keyspace).await?;

    let kcfg = settings.kafka.clone();
    let readiness = Readiness::default()
        .with("kafka", move || {
            let k = kcfg.clone();
            async move { kafka::ping(&k).await }
        })
        .with("cassandra", move || {
            let s = session.clone();
            async move { cql::ping(&s).await }
        })
        .with("clickhouse", move || {
            let c = ch.clone();
            async move { clickhouse::ping(&c).await }
        });
    let (addr, http) = health::serve(
        settings.rating.listen,
        health::router(readiness, metrics.registry.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "rating health and metrics listening");

    let result = pipeline::Pipeline::new(&settings, store, metrics)?
        .run(shutdown.clone())
        .await;
    shutdown.cancel();
    let _ = http.await;
    result
}
