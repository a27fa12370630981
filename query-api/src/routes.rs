//! HTTP routes.

use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};

use crate::error::ApiError;
use crate::AppState;

/// Header naming the tenant of a request.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The `/v1` routes, rate-limited per tenant.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/customers/{customer_id}/usage", get(customer_usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

fn tenant(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers
        .get(TENANT_HEADER)
        .ok_or_else(|| ApiError::BadRequest(format!("the {TENANT_HEADER} header is required")))?;
    let t = raw
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("{TENANT_HEADER} must be ASCII")))?
        .trim();
    if t.is_empty() || t.len() > 128 {
        return Err(ApiError::BadRequest(format!(
            "{TENANT_HEADER} must be 1 to 128 characters"
        )));
    }
    Ok(t.to_owned())
}

async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = tenant(req.headers())?;
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
    headers: HeaderMap,
    Path(customer_id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant_id = tenant(&headers)?;
    let at = match q.at {
        Some(raw) => DateTime::parse_from_rfc3339(&raw)
            .map_err(|e| ApiError::BadRequest(format!("at={raw:?} is not an RFC 3339 time: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let usage = state.store.usage(&tenant_id, &customer_id, at).await?;
    let mut totals: std::collections::BTreeMap<&str, rust_decimal::Decimal> = Default::default();
    for u in &usage {
        *totals.entry(u.currency.as_str()).or_default() += u.amount;
    }
    Ok(Json(serde_json::json!({
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "at": at,
        "charges": usage,
        "totals": totals,
    })))
}
