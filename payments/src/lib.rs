//! payments: charges finalized invoices through a provider, with retries and dunning. This foundation serves health, readiness and metrics; payment processing arrives with its own issue.

pub mod provider;

use billing_runtime::{health, Settings, Shutdown};

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    health::serve_kafka_service(
        "payments",
        settings.payments.listen,
        settings.kafka,
        shutdown,
    )
    .await
}
