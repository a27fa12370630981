//! query-api: the REST API. Reads usage, customers, subscriptions, the catalog, test clocks and invoices; its
//! writes publish lifecycle and catalog events and wait until the invoicer has materialized them
//! (read-your-writes, see `wait`). Every request carries an API key, which decides its tenant and what its role
//! may call, and is rate-limited per key (`billing_runtime::auth`); POSTs take an `Idempotency-Key`; errors are
//! `application/problem+json`. The endpoints are described in `docs/api.md`.

mod analytics;
mod api_keys;
mod audit;
mod catalog;
mod clocks;
mod coupons;
mod credit_notes;
mod customers;
mod error;
mod graphql;
mod idempotency;
mod invoice_cache;
mod invoices;
pub mod openapi;
mod payments;
mod preview;
mod request;
mod routes;
mod store;
mod subscriptions;
mod wait;
mod wallets;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use billing_runtime::health::{self, Readiness};
use billing_runtime::publish::Publisher;
use billing_runtime::{cql, Settings, Shutdown};
use billing_store::api_keys::{ApiKeys, KeyVerifier};
use billing_store::billing::BillingStore;
use billing_store::credit_notes::CreditNoteStore;
use billing_store::payments::PaymentStore;

pub use error::{ApiError, InvalidParam};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    store: Arc<store::Store>,
    billing: Arc<BillingStore>,
    payments: Arc<PaymentStore>,
    credit_notes: Arc<CreditNoteStore>,
    publisher: Publisher,
    /// How long a write waits for its effect by default.
    write_wait: Duration,
    /// Partitions of the lifecycle topic (test clocks are ticked on each).
    partitions: i32,
    /// Webhook endpoints, their delivery logs and redeliver requests.
    webhooks: Arc<webhooks::Stores>,
    /// ClickHouse, for the audit log.
    clickhouse: clickhouse::Client,
    /// The tenant's API keys (listed and revoked by admins).
    api_keys: Arc<ApiKeys>,
    /// The GraphQL schema (`POST /graphql`).
    graphql: graphql::BillingSchema,
    /// Issued invoices as `GET /v1/invoices/{id}` answers them.
    invoice_cache: invoice_cache::InvoiceCache,
}

/// Serve the API until `shutdown`. `on_bound` receives the bound address (useful with port 0 in tests).
pub async fn run(
    settings: Settings,
    shutdown: Shutdown,
    on_bound: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let ks = &settings.cassandra.keyspace;
    let store = Arc::new(store::Store::new(session.clone(), ks).await?);
    let billing = Arc::new(BillingStore::new(session.clone(), ks).await?);
    let payments = Arc::new(PaymentStore::new(session.clone(), ks).await?);
    let credit_notes = Arc::new(CreditNoteStore::new(session.clone(), ks).await?);
    let publisher = Publisher::new(&settings.kafka)?;
    let cfg = &settings.query_api;
    // One set of key statements: the gate verifies with it, the admins' key routes list and revoke with it.
    let api_keys =
        Arc::new(ApiKeys::new(session.clone(), ks, &settings.auth.key_hash_secret).await?);
    let gate = billing_runtime::auth::Gate::new(
        Arc::new(KeyVerifier::new(api_keys.clone(), settings.auth.cache_ttl)),
        settings.rate_limits,
        routes::access_of,
    );
    let registry = prometheus::Registry::new_custom(Some("billing_query_api".into()), None)?;
    let state = AppState {
        store,
        billing,
        payments,
        credit_notes,
        publisher,
        clickhouse: billing_runtime::clickhouse::client(&settings.clickhouse),
        api_keys,
        graphql: graphql::schema(),
        invoice_cache: invoice_cache::InvoiceCache::new(cfg.invoice_cache_ttl, &registry)?,
        write_wait: cfg.write_wait,
        partitions: settings.kafka.partitions,
        webhooks: Arc::new(
            webhooks::Stores::new(
                session.clone(),
                ks,
                settings.webhooks.secret_rotation_overlap,
            )
            .await?,
        ),
    };
    state.invoice_cache.spawn_consumer(&settings)?;
    let readiness = Readiness::default().with("cassandra", move || {
        let s = session.clone();
        async move { cql::ping(&s).await }
    });
    let app = routes::router(state, gate)
        .merge(openapi::router())
        .merge(health::router(readiness, registry))
        .layer(axum::middleware::from_fn(billing_runtime::http::request_id));
    let (addr, handle) = health::serve(cfg.listen, app, shutdown).await?;
    tracing::info!(%addr, "query-api listening");
    on_bound(addr);
    handle.await?;
    Ok(())
}
