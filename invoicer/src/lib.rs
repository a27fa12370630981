//! invoicer: owns subscriptions and the billing clock and finalizes invoices. This foundation serves health, readiness and metrics; invoicing arrives with its own issue.

use billing_runtime::health::{self, Readiness};
use billing_runtime::{kafka, Settings, Shutdown};

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new_custom(Some("billing_invoicer".into()), None)?;
    let kcfg = settings.kafka.clone();
    let readiness = Readiness::default().with("kafka", move || {
        let k = kcfg.clone();
        async move { kafka::ping(&k).await }
    });
    let (addr, handle) = health::serve(
        settings.invoicer.listen,
        health::router(readiness, registry),
        shutdown,
    )
    .await?;
    tracing::info!(%addr, "invoicer health and metrics listening");
    handle.await?;
    Ok(())
}
