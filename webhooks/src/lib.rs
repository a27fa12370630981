//! webhooks: signed webhooks to each tenant's endpoints. A group consumer on `billing.lifecycle`,
//! `billing.invoices` and `billing.payments` maps every event it knows to a webhook event ([`event`]), writes one
//! delivery per subscribed endpoint to ScyllaDB before it commits the offsets (at least once, deterministic ids),
//! and delivery workers POST them, signed with HMAC-SHA256 ([`signing`]), retrying with exponential backoff, one
//! queue per endpoint so a slow endpoint delays only itself. Endpoints are managed through query-api
//! (`/v1/webhook_endpoints`); see `docs/payments.md`, "Webhooks".

pub mod event;
mod metrics;
mod pipeline;
mod sender;
pub mod signing;

use std::sync::Arc;

use billing_runtime::health::{self, Readiness};
use billing_runtime::{cql, Settings, Shutdown};
use billing_store::webhook_deliveries::WebhookDeliveries;
use billing_store::webhook_endpoints::WebhookEndpoints;
use billing_store::webhook_redeliveries::WebhookRedeliveries;

pub use metrics::Metrics;

/// Run the dispatcher and its delivery workers until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let ks = &settings.cassandra.keyspace;
    let endpoints = Arc::new(WebhookEndpoints::new(session.clone(), ks).await?);
    let deliveries = Arc::new(WebhookDeliveries::new(session.clone(), ks).await?);
    let redeliveries = Arc::new(WebhookRedeliveries::new(session.clone(), ks).await?);
    let readiness = Readiness::default()
        .with_kafka(&settings.kafka)
        .with_cassandra(session);
    let (addr, http) = health::serve(
        settings.webhooks.listen,
        health::router(readiness, metrics.registry.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "webhooks health and metrics listening");
    let sender = sender::Sender::new(
        &settings.webhooks,
        endpoints.clone(),
        deliveries.clone(),
        metrics.clone(),
        shutdown.clone(),
    )?;
    let pipeline = pipeline::Pipeline::new(
        &settings,
        endpoints,
        deliveries,
        redeliveries,
        sender,
        metrics,
    )?;
    let result = pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result
}
