//! ingest: the HTTP gateway for producers that do not speak Kafka. `POST /v1/events` validates one event or a
//! batch, produces the valid ones to `billing.usage` (idempotent producer, `acks=all`) and answers only after the
//! broker acknowledged every one of them, with a result per event. Every request carries an API key (role `ingest`,
//! `write` or `admin`), rate-limited per key; an event's `tenant_id` is the key's (filled in when absent, refused
//! per event when it names another). It also serves `/health`, `/ready` and `/metrics` without a key. The validation rules live in `billing_schemas::validate`, which rating calls too.

pub mod events;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use billing_runtime::auth::{self, Access, Principal};
use billing_runtime::health::{self, Readiness};
use billing_runtime::kafka::{self, Topics};
use billing_runtime::{Settings, Shutdown};
use billing_store::api_keys::{ApiKeys, KeyVerifier};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Serialize;

pub use billing_runtime::http::Problem;
use events::Limits;
use metrics::Metrics;

/// The request body limit never exceeds this, whatever `max_batch × max_event_bytes` is.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How long a send may wait for room in the producer's local queue before the event counts as failed.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

struct App {
    producer: FutureProducer,
    topic: String,
    limits: Limits,
    metrics: Metrics,
}

/// Serve until `shutdown`. `on_bound` receives the bound address (useful with port 0 in tests).
pub async fn run(
    settings: Settings,
    shutdown: Shutdown,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let cfg = &settings.ingest;
    let producer = kafka::producer(&settings.kafka)?;
    let registry = prometheus::Registry::new_custom(Some("billing_ingest".into()), None)?;
    let app = Arc::new(App {
        producer: producer.clone(),
        topic: Topics::new(&settings.kafka).usage,
        limits: Limits {
            max_batch: cfg.max_batch,
            max_event_bytes: cfg.max_event_bytes,
            max_future: cfg.max_future,
        },
        metrics: Metrics::register(&registry)?,
    });
    let kafka_cfg = settings.kafka.clone();
    let readiness = Readiness::default().with("kafka", move || {
        let k = kafka_cfg.clone();
        async move { kafka::ping(&k).await }
    });
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let ping = session.clone();
    let readiness = readiness.with("cassandra", move || {
        let s = ping.clone();
        async move { billing_runtime::cql::ping(&s).await }
    });
    let keys = ApiKeys::new(
        session,
        &settings.cassandra.keyspace,
        &settings.auth.key_hash_secret,
    )
    .await?;
    let gate = auth::Gate::new(
        Arc::new(KeyVerifier::new(Arc::new(keys), settings.auth.cache_ttl)),
        settings.rate_limits,
        access_of,
    );
    let router = router(app, gate).merge(health::router(readiness, registry));
    let (addr, handle) = health::serve(cfg.listen, router, shutdown).await?;
    tracing::info!(%addr, "ingest listening");
    on_bound(addr);
    handle.await?;
    // Graceful shutdown waited for in-flight requests, whose events are acknowledged; this is belt and braces.
    tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(&producer, Timeout::After(Duration::from_secs(10)))
    })
    .await??;
    Ok(())
}

/// The one route's access: usage ingestion.
fn access_of(method: &axum::http::Method, path: &str) -> Option<Access> {
    (method == axum::http::Method::POST && path == "/v1/events").then_some(Access::Ingest)
}

fn router(app: Arc<App>, gate: auth::Gate) -> Router {
    let body_limit = app
        .limits
        .max_batch
        .saturating_mul(app.limits.max_event_bytes)
        .min(MAX_BODY_BYTES);
    Router::new()
        .route("/v1/events", post(post_events))
        .route_layer(axum::middleware::from_fn_with_state(gate, auth::gate))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(billing_runtime::http::request_id))
        .with_state(app)
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize)]
struct Answer {
    accepted: usize,
    rejected: usize,
    failed: usize,
    results: Vec<EventResult>,
}

#[derive(Debug, Serialize)]
struct EventResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Outcome {
    /// The broker acknowledged the event at this position.
    Accepted { partition: i32, offset: i64 },
    /// The event is invalid; resending it unchanged cannot succeed.
    Rejected { error: String },
    /// Kafka did not acknowledge it; retrying is safe (the event id is the idempotency key).
    Failed { error: String },
}

async fn post_events(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _timer = app.metrics.request_seconds.start_timer();
    match handle(&app, &principal.tenant_id, &headers, body).await {
        Ok(resp) => resp,
        Err(problem) => problem.into_response(),
    }
}

async fn handle(
    app: &App,
    tenant: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type {ct:?} is not application/json"),
            ));
        }
    }
    let body = body.map_err(|e| {
        let too_large = e.status() == StatusCode::PAYLOAD_TOO_LARGE;
        Problem::new(
            e.status(),
            if too_large {
                format!(
                    "body is larger than the {} bytes allowed",
                    app.limits
                        .max_batch
                        .saturating_mul(app.limits.max_event_bytes)
                        .min(MAX_BODY_BYTES)
                )
            } else {
                e.body_text()
            },
        )
    })?;
    let elements = events::split_body(&body, app.limits.max_batch)?;
    let now = chrono::Utc::now();

    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(elements.len());
    let mut ready = Vec::new();
    for (index, element) in elements.into_iter().enumerate() {
        let event_id = events::raw_event_id(&element);
        let prepared = events::of_tenant(element, tenant)
            .and_then(|element| events::prepare(element, now, &app.limits));
        match prepared {
            Ok(p) => {
                ready.push((index, p));
                results.push(None);
            }
            Err(error) => results.push(Some(EventResult {
                index,
                event_id,
                outcome: Outcome::Rejected { error },
            })),
        }
    }

    // All sends are in flight together; the answer waits for every acknowledgement.
    let content_type = OwnedHeaders::new().insert(Header {
        key: billing_schemas::CONTENT_TYPE_HEADER,
        value: Some(billing_schemas::Encoding::Json.content_type()),
    });
    let deliveries = futures::future::join_all(ready.iter().map(|(_, p)| {
        let record = FutureRecord::to(&app.topic)
            .key(&p.key)
            .payload(&p.payload)
            .headers(content_type.clone());
        app.producer.send(record, Timeout::After(QUEUE_TIMEOUT))
    }))
    .await;
    for ((index, p), delivery) in ready.into_iter().zip(deliveries) {
        let outcome = match delivery {
            Ok(d) => Outcome::Accepted {
                partition: d.partition,
                offset: d.offset,
            },
            Err((e, _)) => {
                tracing::warn!(error = %e, tenant = %p.event.tenant_id, event_id = %p.event.event_id,
                    "produce failed");
                Outcome::Failed {
                    error: format!("Kafka did not acknowledge the event ({e}); retry it"),
                }
            }
        };
        results[index] = Some(EventResult {
            index,
            event_id: Some(p.event.event_id),
            outcome,
        });
    }

    let results: Vec<EventResult> = results.into_iter().flatten().collect();
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let answer = Answer {
        accepted: count(|o| matches!(o, Outcome::Accepted { .. })),
        rejected: count(|o| matches!(o, Outcome::Rejected { .. })),
        failed: count(|o| matches!(o, Outcome::Failed { .. })),
        results,
    };
    for (outcome, n) in [
        ("accepted", answer.accepted),
        ("rejected", answer.rejected),
        ("failed", answer.failed),
    ] {
        app.metrics
            .events
            .with_label_values(&[outcome])
            .inc_by(n as u64);
    }
    let status = if answer.failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}
