//! query-api: the REST API over usage (and, as they land, invoices and subscriptions). Every request names its
//! tenant in the `X-Tenant-Id` header (API keys will replace it) and is rate-limited per tenant; errors are
//! `application/problem+json`.

mod error;
mod routes;
mod store;

use std::num::NonZeroU32;
use std::sync::Arc;

use billing_runtime::health::{self, Readiness};
use billing_runtime::{cql, Settings, Shutdown};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub use error::ApiError;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    store: Arc<store::Store>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

/// Serve the API until `shutdown`. `on_bound` receives the bound address (useful with port 0 in tests).
pub async fn run(
    settings: Settings,
    shutdown: Shutdown,
    on_bound: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let store = Arc::new(store::Store::new(session.clone(), &settings.cassandra.keyspace).await?);
    let cfg = &settings.query_api;
    let quota =
        Quota::per_second(NonZeroU32::new(cfg.rate_limit_per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(NonZeroU32::MIN));
    let state = AppState {
        store,
        limiter: Arc::new(RateLimiter::keyed(quota)),
    };
    let registry = prometheus::Registry::new_custom(Some("billing_query_api".into()), None)?;
    let readiness = Readiness::default().with("cassandra", move || {
        let s = session.clone();
        async move { cql::ping(&s).await }
    });
    let app = routes::router(state).merge(health::router(readiness, registry));
    let (addr, handle) = health::serve(cfg.listen, app, shutdown).await?;
    tracing::info!(%addr, "query-api listening");
    on_bound(addr);
    handle.await?;
    Ok(())
}
