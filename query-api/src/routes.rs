//! HTTP routes.

use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};

use billing_runtime::http::Tenant;

use crate::error::ApiError;
use crate::AppState;

/// The `/v1` routes, rate-limited per tenant.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/customers/{customer_id}/usage", get(customer_usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Tenant(key) = Tenant::from_headers(req.headers())?;
    if let Err(not_until) = state.limiter.check_key(&key) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::RateLimited(wait.as_secs() + 1));
    }
    Ok(next.run(req).await)
}

#[derive(serde::Deserialize)]
struct UsageQuery {
    /// The instant whose billing periods are shown (RFC 3339); defaults to now.
    at: Option<String>,
}

async fn customer_usage(
    State(state): State<AppState>,
    Tenant(tenant_id): Tenant,
    Path(customer_id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let at = match q.at {
        Some(raw) => DateTime::parse_from_rfc3339(&raw)
            .map_err(|e| ApiError::BadRequest(format!("at={raw:?} is not an RFC 3339 time: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let usage = state.store.usage(&tenant_id, &customer_id, at).await?;
    let mut totals: std::collections::BTreeMap<&str, rust_decimal::Decimal> = Default::default();
    for u in &usage {
        *totals.entry(u.currency.as_str()).or_default() += u.amount.unwrap_or_default();
    }
    Ok(Json(serde_json::json!({
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "at": at,
        "charges": usage,
        "totals": totals,
    })))
}
