//! API keys through the API, for admins: `GET /v1/api_keys` lists the tenant's keys (their visible prefixes, never
//! the keys), `POST /v1/api_keys/{key_id}/revoke` revokes one (refused everywhere within `auth.cache_ttl`). Keys are
//! created by `billing api-key create`, which shows a key once: an API answer would be kept by idempotency replays.

use axum::extract::{Path, State};
use axum::Json;
use billing_runtime::auth::KEY_PREFIX;
use billing_runtime::http::Tenant;
use billing_store::api_keys::ApiKey;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::{after_cursor, page, page_limit, ApiQuery, PageQuery};
use crate::AppState;

fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.prefix(),
        "object": "api_key",
        "role": k.role.as_str(),
        "name": k.name,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
        "status": if k.revoked_at.is_some() { "revoked" } else { "active" },
    })
}

/// `GET /v1/api_keys?limit=&starting_after=`: oldest first.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let keys = state.api_keys.keys_of(&tenant).await?;
    // The cursor is a key's `bk_<id>`, as listed.
    let after = q
        .starting_after
        .as_deref()
        .map(|a| a.strip_prefix(KEY_PREFIX).unwrap_or(a));
    let keys = after_cursor(keys, after, |k| k.key_id.as_str())?;
    let items: Vec<Value> = keys.iter().take(limit + 1).map(key_json).collect();
    Ok(Json(page(items, limit)?))
}

/// `POST /v1/api_keys/{key_id}/revoke`: the key, revoked (a revoked key stays revoked, at its first time).
pub async fn revoke(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no API key {key_id:?}"));
    let Some(key) = state.api_keys.key(&key_id).await? else {
        return Err(not_found());
    };
    if key.tenant_id != tenant {
        return Err(not_found());
    }
    let revoked = state
        .api_keys
        .revoke(&key.key_id, chrono::Utc::now())
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(key_json(&revoked)))
}
