//! invoicer: consumes `billing.lifecycle` (customers, subscriptions, clock ticks) and `billing.catalog`, owns the
//! billing read models (customers, subscriptions, catalog, test clocks) and the invoices. When a clock passes a
//! customer's billing date, and rating has checkpointed the customer's usage partition, it assembles one invoice
//! per customer and billing date with the core, keeps it a draft during the customer's grace period, then
//! numbers it gap-free, stores it, publishes `invoice.finalized` on `billing.invoices` and writes it to
//! ClickHouse. See [`service`] for how it stays exact across crashes. It also keeps the analysts' facts that need
//! its fold or follow the payments ([`analytics`]: subscriptions' MRR, money movements).

pub mod analytics;
mod bill;
mod credit_notes;
pub mod metrics;
pub mod payments;
pub mod service;
mod views;

use std::sync::Arc;

use billing_runtime::health::{self, Readiness};
use billing_runtime::{clickhouse, cql, Settings, Shutdown};

pub use metrics::Metrics;

/// Run the invoicer until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let ks = settings.cassandra.keyspace.clone();
    let store = Arc::new(billing_store::billing::BillingStore::new(session.clone(), &ks).await?);
    let usage = billing_store::usage::UsageStore::new(session.clone(), &ks).await?;
    let ch = clickhouse::client(&settings.clickhouse);
    let readiness = Readiness::default()
        .with_kafka(&settings.kafka)
        .with_cassandra(session.clone())
        .with_clickhouse(ch.clone());
    let (addr, http) = health::serve(
        settings.invoicer.listen,
        health::router(readiness, metrics.registry.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "invoicer health and metrics listening");
    let payment_store =
        Arc::new(billing_store::payments::PaymentStore::new(session.clone(), &ks).await?);
    let credit_notes =
        Arc::new(billing_store::credit_notes::CreditNoteStore::new(session, &ks).await?);
    let views = payments::PaymentViews::new(
        &settings,
        store.clone(),
        payment_store.clone(),
        credit_notes.clone(),
        metrics.clone(),
    )?;
    let views = tokio::spawn(views.run(shutdown.clone()));
    let facts = analytics::PaymentFacts::new(&settings, ch.clone(), metrics.clone())?;
    let facts = tokio::spawn(facts.run(shutdown.clone()));
    let (mrr, mrr_writer) =
        analytics::MrrWriter::spawn(ch.clone(), metrics.clone(), shutdown.clone());
    let invoicer = service::Invoicer::new(
        settings,
        store,
        usage,
        ch,
        metrics,
        credit_notes,
        payment_store,
        mrr,
    )
    .await?;
    let result = invoicer.run(shutdown.clone()).await;
    shutdown.cancel();
    let views = views.await.map_err(anyhow::Error::from).and_then(|r| r);
    let facts = facts.await.map_err(anyhow::Error::from).and_then(|r| r);
    let _ = mrr_writer.await;
    let result = result.and(views).and(facts);
    shutdown.cancel();
    let _ = http.await;
    result
}
