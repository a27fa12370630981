//! ingest: the HTTP gateway for producers that do not speak Kafka. This foundation serves health, readiness and metrics; `POST /v1/events` arrives with the usage-pipeline issue.

use billing_runtime::{health, Settings, Shutdown};

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    health::serve_kafka_service("ingest", settings.ingest.listen, settings.kafka, shutdown).await
}
