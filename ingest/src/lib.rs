//! ingest: the HTTP gateway for producers that do not speak Kafka. This foundation serves health, readiness and metrics; `POST /v1/events` arrives with the usage-pipeline issue.

use billing_runtime::health::{self, Readiness};
use billing_runtime::{kafka, Settings, Shutdown};

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new_custom(Some("billing_ingest".into()), None)?;
    let kcfg = settings.kafka.clone();
    let readiness = Readiness::default().with("kafka", move || {
        let k = kcfg.clone();
        async move { kafka::ping(&k).await }
    });
    let (addr, handle) = health::serve(
        settings.ingest.listen,
        health::router(readiness, registry),
        shutdown,
    )
    .await?;
    tracing::info!(%addr, "ingest health and metrics listening");
    handle.await?;
    Ok(())
}
