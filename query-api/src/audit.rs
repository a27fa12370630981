//! The audit log (`docs/api.md`, "Audit log"): every write of this API (a `POST` or `DELETE` that is not a read by
//! `POST`, such as the invoice preview), accepted or refused, is appended to ClickHouse `audit_log` before it is
//! answered: who (key id and role), what (method, path, route, resource, status, the request and answer bodies with
//! secrets redacted), when and from where. `GET /v1/audit` lists it, newest first, for admins; nothing in the API
//! changes or deletes it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use billing_runtime::auth::{Access, Principal, KEY_PREFIX};
use billing_runtime::http::{Problem, RequestId, Tenant};
use billing_store::audit_log::{self, AuditRow};
use chrono::{TimeZone, Utc};
use serde_json::Value;

use crate::error::ApiError;
use crate::request::{page, page_limit, ApiQuery, MAX_BODY};
use crate::AppState;

/// How long one append may take, and how many times it is tried.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
const APPEND_ATTEMPTS: u32 = 3;

/// The middleware, inside the API key gate (it needs the principal) and outside idempotency (a replayed answer is
/// logged too).
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let is_write = method != Method::GET
        && !matches!(
            crate::routes::access_of(&method, &route),
            Some(Access::Read)
        );
    let principal = req.extensions().get::<Principal>().cloned();
    let (true, Some(principal)) = (is_write, principal) else {
        return next.run(req).await;
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let remote_addr = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string())
        })
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let Ok(request_body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
        .into_response();
    };
    let response = next
        .run(Request::from_parts(
            parts,
            axum::body::Body::from(request_body.clone()),
        ))
        .await;
    // What the write changed is in the store now (or will be, for a 202): nothing cached before it is served.
    state.invoice_cache.tenant_changed(&principal.tenant_id);
    let (parts, body) = response.into_parts();
    let response_body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let now = Utc::now();
    let row = AuditRow {
        tenant_id: principal.tenant_id,
        at: u32::try_from(now.timestamp()).unwrap_or(u32::MAX),
        at_ms: u64::try_from(now.timestamp_millis()).unwrap_or_default(),
        request_id,
        key_id: principal.key_id,
        role: principal.role.as_str().to_owned(),
        method: method.to_string(),
        resource_id: audit_log::resource_id(&path, &route, &response_body),
        path,
        route,
        status: parts.status.as_u16(),
        remote_addr,
        request: audit_log::summarize(&request_body),
        response: audit_log::summarize(&response_body),
    };
    append(&state, &row).await;
    Response::from_parts(parts, axum::body::Body::from(response_body))
}

/// Append with a timeout and retries; a row that still cannot be written goes whole to the service's log (error
/// level), so it is never silently lost; the write it records has happened and is answered.
async fn append(state: &AppState, row: &AuditRow) {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=APPEND_ATTEMPTS {
        match tokio::time::timeout(APPEND_TIMEOUT, audit_log::append(&state.clickhouse, row)).await
        {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::warn!(attempt, error = %format!("{e:#}"), "audit append failed"),
            Err(_) => tracing::warn!(attempt, "audit append timed out"),
        }
        if attempt < APPEND_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
    }
    tracing::error!(audit = ?row, "audit entry not written to ClickHouse; kept in this log");
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
    /// Only the writes of this key (`bk_<id>` or the id).
    key_id: Option<String>,
}

/// An entry's id: `aud_<at_ms>_<request id>`.
fn entry_id(row: &AuditRow) -> String {
    format!("aud_{}_{}", row.at_ms, row.request_id)
}

fn parse_entry_id(id: &str) -> Option<(u64, &str)> {
    let (ms, request) = id.strip_prefix("aud_")?.split_once('_')?;
    Some((ms.parse().ok()?, request))
}

fn as_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `GET /v1/audit?limit=&starting_after=&key_id=`: the tenant's writes, newest first (admins).
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let before = match &q.starting_after {
        Some(after) => Some(parse_entry_id(after).ok_or_else(|| {
            ApiError::malformed(
                "starting_after",
                format!("{after:?} is not an audit entry id"),
            )
        })?),
        None => None,
    };
    let key = q
        .key_id
        .as_deref()
        .map(|k| k.strip_prefix(KEY_PREFIX).unwrap_or(k));
    let rows = audit_log::list(&state.clickhouse, &tenant, before, key, limit as u32 + 1).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": entry_id(r),
                "at": Utc.timestamp_millis_opt(r.at_ms as i64).single(),
                "request_id": r.request_id,
                "key": format!("{KEY_PREFIX}{}", r.key_id),
                "role": r.role,
                "method": r.method,
                "path": r.path,
                "route": r.route,
                "resource_id": r.resource_id,
                "status": r.status,
                "remote_addr": r.remote_addr,
                "request": as_json(&r.request),
                "response": as_json(&r.response),
            })
        })
        .collect();
    Ok(Json(page(items, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_round_trip() {
        let row = AuditRow {
            tenant_id: "t".into(),
            at: 1,
            at_ms: 1_700_000_000_123,
            request_id: "req_a_b".into(),
            key_id: "k".into(),
            role: "admin".into(),
            method: "POST".into(),
            path: "/v1/customers".into(),
            route: "/v1/customers".into(),
            resource_id: "c".into(),
            status: 201,
            remote_addr: String::new(),
            request: String::new(),
            response: String::new(),
        };
        let id = entry_id(&row);
        assert_eq!(parse_entry_id(&id), Some((1_700_000_000_123, "req_a_b")));
        assert_eq!(parse_entry_id("aud_x_y"), None);
        assert_eq!(parse_entry_id("cus_1"), None);
    }
}
