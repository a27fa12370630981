//! `/health` (the process runs and is not stuck), `/ready` (its dependencies answer) and `/metrics` (Prometheus
//! text).

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
type LivenessFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Named readiness checks, each an async probe of one dependency, and the liveness checks of `/health`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, CheckFn)>,
    liveness: Vec<(String, LivenessFn)>,
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

    /// Add a liveness check: `/health` answers 503 naming it while it fails (an orchestrator then restarts the
    /// process). It must answer at once, from the process's own state.
    pub fn with_liveness<F>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        self.liveness.push((name.to_owned(), Arc::new(check)));
        self
    }

    /// Run the liveness checks: the failing ones, by name.
    pub fn stuck(&self) -> serde_json::Map<String, serde_json::Value> {
        self.liveness
            .iter()
            .filter_map(|(name, check)| check().err().map(|e| (name.clone(), e.into())))
            .collect()
    }

    /// Add the check that the Kafka cluster answers (`kafka`).
    pub fn with_kafka(self, cfg: &crate::config::KafkaConfig) -> Self {
        let cfg = cfg.clone();
        self.with("kafka", move || {
            let k = cfg.clone();
            async move { crate::kafka::ping(&k).await }
        })
    }

    /// Add the check that Cassandra/ScyllaDB serves CQL (`cassandra`).
    pub fn with_cassandra(self, session: Arc<scylla::client::session::Session>) -> Self {
        self.with("cassandra", move || {
            let s = session.clone();
            async move { crate::cql::ping(&s).await }
        })
    }

    /// Add the check that ClickHouse answers (`clickhouse`).
    pub fn with_clickhouse(self, client: clickhouse::Client) -> Self {
        self.with("clickhouse", move || {
            let c = client.clone();
            async move { crate::clickhouse::ping(&c).await }
        })
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

/// Liveness: 200 while the process serves (orchestrators restart it otherwise).
pub const HEALTH_PATH: &str = "/health";
/// Readiness: 200 once every check passes, 503 with the failing checks otherwise.
pub const READY_PATH: &str = "/ready";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The three endpoints, to serve alone or merge into a service's router.
pub fn router(readiness: Readiness, registry: Registry) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(health))
        .route(READY_PATH, get(ready))
        .route(METRICS_PATH, get(metrics))
        .with_state(HealthState {
            readiness,
            registry,
        })
}

async fn health(State(s): State<HealthState>) -> Response {
    let stuck = s.readiness.stuck();
    if stuck.is_empty() {
        return Json(serde_json::json!({"status": "ok"})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"status": "stuck", "checks": stuck})),
    )
        .into_response()
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
        // The peer's address is in every request's extensions (`ConnectInfo`), for the audit log.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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

/// The first port [`free_loopback_addr`] may hand out, and how many it cycles through: below Linux's ephemeral
/// range (32768–60999) and clear of the local stack's fixed ports (7000–9093).
const FREE_PORTS_FROM: u32 = 20_000;
const FREE_PORTS_COUNT: u32 = 12_000;

/// A loopback address that is free now, for tests and benchmarks that must name a service's listen address before
/// starting it. A port asked of the kernel (`:0`) is from the ephemeral range, so an outgoing connection (to Kafka,
/// Cassandra, ...) may take it before the service binds it (CI saw `Address already in use`); these ports are below
/// that range, and each is handed out once per process.
pub fn free_loopback_addr() -> std::io::Result<std::net::SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start where another process (a benchmark and the services it spawns) is unlikely to be.
    let offset = (std::process::id() % 1_000) * 12;
    for _ in 0..FREE_PORTS_COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FREE_PORTS_FROM + (offset + n) % FREE_PORTS_COUNT;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod free_port_tests {
    use super::*;

    #[test]
    fn free_loopback_addrs_are_distinct_and_outside_the_ephemeral_range() {
        let a = free_loopback_addr().unwrap();
        let b = free_loopback_addr().unwrap();
        assert_ne!(a.port(), b.port());
        for addr in [a, b] {
            assert!(addr.ip().is_loopback());
            assert!((20_000..32_000).contains(&addr.port()), "{addr}");
            std::net::TcpListener::bind(addr).expect("still free");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_the_failing_liveness_checks_only() {
        let stuck = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stuck.clone();
        let r = Readiness::default()
            .with_liveness("loop", move || {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    Err("blocked on a store for 301 s".into())
                } else {
                    Ok(())
                }
            })
            .with_liveness("other", || Ok(()));
        assert!(r.stuck().is_empty());
        stuck.store(true, std::sync::atomic::Ordering::Relaxed);
        let failing = r.stuck();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing["loop"], "blocked on a store for 301 s");
    }
}
