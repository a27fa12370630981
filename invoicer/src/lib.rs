//! invoicer: owns subscriptions and the billing clock and finalizes invoices. This foundation serves health, readiness and metrics; invoicing arrives with its own issue.

use billing_runtime::{health, Settings, Shutdown};

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    health::serve_kafka_service(
        "invoicer",
        settings.invoicer.listen,
        settings.kafka,
        shutdown,
    )
    .await
}
