//! rating: consumes `billing.usage`; validates each event; attributes it to the subscription, plan, charge and
//! billing period in force at its time (from `billing.catalog` and `billing.lifecycle`); keeps one running
//! aggregate per (subscription, charge, period, group) in ScyllaDB; records every accepted event with its rated
//! amount in ClickHouse. Bad messages go to `billing.usage.dlq` with the reason.
//!
//! Exactly-once effects over at-least-once delivery: state is kept in memory and checkpointed as absolute values,
//! each aggregate stamped with the Kafka offset of the last event it includes. A replayed event whose offset is not
//! above its aggregate's offset is skipped, event ids already counted are skipped (dedup per tenant and customer,
//! kept 40 days), and aggregates are written `USING TIMESTAMP offset + 1`, so a stale writer (an old owner after a
//! rebalance) never overwrites newer state. Kafka offsets are committed after the writes they cover.

mod metrics;
mod pipeline;
pub mod rate;
mod reference;
mod snapshots;
pub mod validate;

use std::sync::Arc;

use billing_runtime::health::{self, Readiness};
use billing_runtime::kafka::Topics;
use billing_runtime::{clickhouse, cql, Settings, Shutdown};

pub use metrics::Metrics;
pub use validate::Rejection;

/// Run rating until `shutdown`; returns after the final checkpoint.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let metrics = Metrics::new()?;
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let ch = clickhouse::client(&settings.clickhouse);
    let store =
        billing_store::usage::UsageStore::new(session.clone(), &settings.cassandra.keyspace)
            .await?;
    let progress = pipeline::Progress::default();
    let store_ms = started.elapsed().as_millis();

    let reference = reference::SharedReference::for_attribution();
    let pipeline = pipeline::Pipeline::new(
        &settings,
        store,
        ch.clone(),
        metrics.clone(),
        reference.clone(),
        progress.clone(),
    )?;
    let (probe, stall_progress) = (Arc::new(pipeline.lag_probe()), progress.clone());
    let stall_timeout =
        chrono::Duration::from_std(settings.rating.stall_timeout).unwrap_or(chrono::Duration::MAX);
    let stuck_timeout =
        chrono::Duration::from_std(settings.rating.stuck_timeout).unwrap_or(chrono::Duration::MAX);
    let waiting = progress.clone();
    let readiness = Readiness::default()
        // A loop that has waited on a store this long is stuck: an orchestrator restarts it.
        .with_liveness("consumer", move || match pipeline::waiting_for(&waiting) {
            Some(w) if w > stuck_timeout => Err(format!(
                "waiting on a store for {} s (rating.stuck_timeout)",
                w.num_seconds()
            )),
            _ => Ok(()),
        })
        .with_kafka(&settings.kafka)
        .with_cassandra(session.clone())
        .with_clickhouse(ch.clone())
        // A consumer that has stopped while work is waiting is not ready, whatever its connections say.
        .with("consumer", move || {
            let (probe, p) = (probe.clone(), stall_progress.clone());
            async move {
                let lag = tokio::task::spawn_blocking(move || probe.lag())
                    .await
                    .map_err(|e| e.to_string())??;
                match pipeline::since_progress(&p) {
                    Some(idle) if lag > 0 && idle > stall_timeout => Err(format!(
                        "stalled: lag {lag}, no checkpoint for {} s",
                        idle.num_seconds()
                    )),
                    None if lag > 0 => Err(format!("not consuming yet: lag {lag}")),
                    _ => Ok(()),
                }
            }
        });
    let (addr, http) = health::serve(
        settings.rating.listen,
        health::router(readiness, metrics.registry.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "rating health and metrics listening");

    let topics = Topics::new(&settings.kafka);
    let snapshots = snapshots::Snapshots::new(
        billing_store::reference_snapshots::ReferenceSnapshots::new(
            session.clone(),
            &settings.cassandra.keyspace,
        )
        .await?,
        &topics.lifecycle,
        &settings.rating,
        metrics.clone(),
    );
    let ends = {
        let (kafka, topics) = (settings.kafka.clone(), topics.clone());
        tokio::task::spawn_blocking(move || reference::lifecycle_ends(&kafka, &topics)).await??
    };
    let snapshot = snapshots.newest(&ends).await;
    let reader = reference.spawn_reader(
        &settings.kafka,
        &topics,
        snapshot,
        Some(snapshots.spawn_writer(shutdown.clone())),
        metrics.clone(),
        shutdown.clone(),
    )?;
    tracing::info!(
        store_ms,
        reference_ms = started.elapsed().as_millis() - store_ms,
        "rating started: store connected, reference snapshot read"
    );
    let result = pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = reader.await;
    let _ = http.await;
    result
}
