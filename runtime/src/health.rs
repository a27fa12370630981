//! `/health` (the process runs), `/ready` (its dependencies answer) and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// How long `/ready` waits for one check: a dependency that hangs (a stopped process) makes the check fail, it
/// never makes `/ready` hang.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Named readiness checks, each an async probe of one dependency.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, CheckFn)>,
}

impl Readiness {
    /// Add a check.
    pub fn with<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.to_owned(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// Run every check; `Ok` when all pass. The map names each check's outcome.
    pub async fn run(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results = futures::future::join_all(self.checks.iter().map(|(_, c)| async move {
            tokio::time::timeout(CHECK_TIMEOUT, c())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
        }))
        .await;
        let mut ok = true;
        let mut out = serde_json::Map::new();
        for ((name, _), r) in self.checks.iter().zip(results) {
            let v = match r {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    ok = false;
                    e
                }
            };
            out.insert(name.clone(), v.into());
        }
        (ok, out)
    }
}

#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    registry: Registry,
}

/// The three endpoints, to serve alone or merge into a service's router.
pub fn router(readiness: Readiness, registry: Registry) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            readiness,
            registry,
        })
}

async fn ready(State(s): State<HealthState>) -> Response {
    let (ok, checks) = s.readiness.run().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": ok, "checks": checks})),
    )
        .into_response()
}

async fn metrics(State(s): State<HealthState>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// Serve a router until shutdown. Returns once the listener is bound, with the bound address.
pub async fn serve(
    listen: std::net::SocketAddr,
    app: Router,
    shutdown: crate::Shutdown,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((addr, handle))
}

/// Serve only `/health`, `/ready` (Kafka answers) and `/metrics` until shutdown: the whole of a service whose
/// pipeline has not been built yet.
pub async fn serve_kafka_service(
    service: &str,
    listen: std::net::SocketAddr,
    kafka: crate::config::KafkaConfig,
    shutdown: crate::Shutdown,
) -> anyhow::Result<()> {
    let registry = Registry::new_custom(Some(format!("billing_{service}")), None)?;
    let readiness = Readiness::default().with("kafka", move || {
        let k = kafka.clone();
        async move { crate::kafka::ping(&k).await }
    });
    let (addr, handle) = serve(listen, router(readiness, registry), shutdown).await?;
    tracing::info!(%addr, service, "health and metrics listening");
    handle.await?;
    Ok(())
}
