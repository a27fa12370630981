//! payments: charges finalized invoices through a payment provider, retries them on the billing clock, and runs
//! dunning when the retries are exhausted. It consumes `billing.invoices`, `billing.payments` (the API's payment
//! methods and requests, and its own outcomes) and `billing.lifecycle` (customers' clocks, subscriptions, ticks),
//! and publishes attempts, outcomes, reminders and uncollectible invoices on `billing.payments`, and dunning's
//! pauses and cancellations on `billing.lifecycle`. See [`service`] for how a crash never charges twice, and
//! `docs/payments.md` for the flows.

pub mod book;
mod metrics;
pub mod provider;
pub mod service;

use std::sync::Arc;

use billing_runtime::health::{self, Readiness};
use billing_runtime::{cql, Settings, Shutdown};
use billing_store::payments::PaymentStore;
use billing_store::sandbox_ledger::SandboxLedgerStore;

pub use metrics::Metrics;

/// Run until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let ks = settings.cassandra.keyspace.clone();
    let store = Arc::new(PaymentStore::new(session.clone(), &ks).await?);
    let ledger = Arc::new(SandboxLedgerStore::new(session.clone(), &ks).await?);
    let provider = provider::from_config(&settings.payments.provider, ledger)?;
    let readiness = Readiness::default()
        .with_kafka(&settings.kafka)
        .with_cassandra(session);
    let (addr, http) = health::serve(
        settings.payments.listen,
        health::router(readiness, metrics.registry.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, provider = provider.name(), "payments health and metrics listening");
    let service = service::Payments::new(&settings, store, provider, metrics)?;
    let result = service.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result
}
