//! `/v1/webhook_endpoints`: a tenant's webhook endpoints (create, list, read, update, rotate the secret, delete),
//! each endpoint's delivery log, and redeliver requests. query-api is the one writer of `webhook_endpoints` and
//! `webhook_redeliveries`; the webhooks service reads them and writes the deliveries this module reads. The
//! delivery rules are in `docs/payments.md`, "Webhooks".
//!
//! A bad URL or an unknown event type is a 400 naming the field (the body is not a valid endpoint), and nothing
//! is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use billing_runtime::http::Tenant;
use billing_store::webhook_deliveries::{Delivery, WebhookDeliveries};
use billing_store::webhook_endpoints::{
    WebhookEndpoint, WebhookEndpoints, ALL_TYPES, EVENT_TYPES, SECRET_PREFIX,
};
use billing_store::webhook_redeliveries::{Redelivery, WebhookRedeliveries};
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::{page, page_limit, unknown_cursor, ApiJson, ApiQuery, Check, PageQuery};
use crate::wait::{answer, Answer};
use crate::AppState;

/// Most endpoints of one tenant.
pub const MAX_ENDPOINTS: usize = 50;
/// Longest URL.
const MAX_URL: usize = 2048;
/// Longest description.
const MAX_DESCRIPTION: usize = 500;
/// Characters of the secret that reads show.
const SHOWN_SECRET: usize = SECRET_PREFIX.len() + 4;

/// The webhook tables as the API uses them.
pub struct Stores {
    endpoints: WebhookEndpoints,
    deliveries: WebhookDeliveries,
    redeliveries: WebhookRedeliveries,
    /// How long a rotated-out secret keeps signing.
    rotation_overlap: Duration,
}

impl Stores {
    /// Prepare every statement once.
    pub async fn new(
        session: Arc<Session>,
        ks: &str,
        rotation_overlap: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Stores {
            endpoints: WebhookEndpoints::new(session.clone(), ks).await?,
            deliveries: WebhookDeliveries::new(session.clone(), ks).await?,
            redeliveries: WebhookRedeliveries::new(session, ks).await?,
            rotation_overlap,
        })
    }
}

/// A write that takes no query parameters (an unknown one is a 400, as everywhere).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// `POST /v1/webhook_endpoints`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://example.com/hooks", "event_types": ["invoice.finalized"]}))]
pub struct CreateEndpoint {
    url: String,
    event_types: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// `POST /v1/webhook_endpoints/{id}`: the fields given change.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// An absolute `http` or `https` URL with a host, no credentials and no whitespace.
fn check_url(c: &mut Check, url: &str) {
    let refuse = |c: &mut Check, why: &str| c.fail("url", format!("{url:?} {why}"));
    if url.is_empty() || url.len() > MAX_URL {
        return c.fail("url", format!("must be 1 to {MAX_URL} characters"));
    }
    if url.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return refuse(c, "contains whitespace or control characters");
    }
    let Ok(uri) = url.parse::<Uri>() else {
        return refuse(c, "is not a URL");
    };
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => return refuse(c, &format!("has scheme {other:?}: only http and https")),
        None => return refuse(c, "is not absolute (http:// or https://)"),
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => refuse(c, "may not carry credentials"),
        Some(a) if !a.host().is_empty() => {}
        _ => refuse(c, "has no host"),
    }
}

/// A non-empty list of known types without duplicates, or `["*"]` alone.
fn check_types(c: &mut Check, types: &[String]) {
    if types.is_empty() {
        return c.fail(
            "event_types",
            format!("must name at least one type, or {ALL_TYPES:?} for all"),
        );
    }
    for (i, t) in types.iter().enumerate() {
        let name = format!("event_types[{i}]");
        if t == ALL_TYPES {
            if types.len() > 1 {
                c.fail(
                    name,
                    format!("{ALL_TYPES:?} subscribes to every type: give it alone"),
                );
            }
        } else if !EVENT_TYPES.contains(&t.as_str()) {
            c.fail(
                name,
                format!(
                    "unknown event type {t:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            );
        } else if types[..i].contains(t) {
            c.fail(name, format!("{t:?} is listed twice"));
        }
    }
}

fn check_description(c: &mut Check, d: &str) {
    if d.chars().count() > MAX_DESCRIPTION {
        c.fail(
            "description",
            format!("longer than {MAX_DESCRIPTION} characters"),
        );
    }
}

impl CreateEndpoint {
    /// Every refused field (400), or the checked values.
    fn validate(self) -> Result<Self, ApiError> {
        let mut c = Check::new();
        check_url(&mut c, &self.url);
        check_types(&mut c, &self.event_types);
        if let Some(d) = &self.description {
            check_description(&mut c, d);
        }
        c.finish_with(StatusCode::BAD_REQUEST)?;
        Ok(self)
    }
}

impl UpdateEndpoint {
    /// `existing` with the changes applied, or every refused field (400).
    fn apply(self, mut existing: WebhookEndpoint) -> Result<WebhookEndpoint, ApiError> {
        let mut c = Check::new();
        if let Some(u) = &self.url {
            check_url(&mut c, u);
        }
        if let Some(t) = &self.event_types {
            check_types(&mut c, t);
        }
        if let Some(d) = &self.description {
            check_description(&mut c, d);
        }
        c.finish_with(StatusCode::BAD_REQUEST)?;
        if let Some(u) = self.url {
            existing.url = u;
        }
        if let Some(t) = self.event_types {
            existing.event_types = t;
        }
        if let Some(d) = self.description {
            existing.description = d;
        }
        if let Some(e) = self.enabled {
            existing.enabled = e;
        }
        Ok(existing)
    }
}

/// A fresh signing secret: `whsec_` and 64 hex digits (256 bits from the OS's CSPRNG, through two v4 UUIDs'
/// random bits and SHA-256).
fn new_secret() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(uuid::Uuid::new_v4().as_bytes());
    h.update(uuid::Uuid::new_v4().as_bytes());
    h.update(uuid::Uuid::new_v4().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{SECRET_PREFIX}{hex}")
}

/// The endpoint as the API shows it; `secret` only in the answers of creation and rotation.
fn view(e: &WebhookEndpoint, show_secret: bool) -> Value {
    let mut v = json!({
        "id": e.endpoint_id,
        "object": "webhook_endpoint",
        "url": e.url,
        "event_types": e.event_types,
        "description": e.description,
        "enabled": e.enabled,
        "secret_prefix": e.secret.chars().take(SHOWN_SECRET).collect::<String>(),
        "previous_secret_expires_at": e.previous_secret_expires_at.filter(|t| *t > Utc::now()),
        "created_at": e.created_at,
        "updated_at": e.updated_at,
    });
    if show_secret {
        v["secret"] = Value::String(e.secret.clone());
    }
    v
}

fn delivery_view(d: &Delivery) -> Value {
    json!({
        "id": d.delivery_id,
        "object": "webhook_delivery",
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "created_at": d.created_at,
        "next_attempt_at": d.next_attempt_at,
        "attempts": d.attempts,
    })
}

async fn existing(state: &AppState, tenant: &str, id: &str) -> Result<WebhookEndpoint, ApiError> {
    state
        .webhooks
        .endpoints
        .get(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint {id:?}")))
}

/// `POST /v1/webhook_endpoints`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(_): ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<Answer, ApiError> {
    let body = body.validate()?;
    if state.webhooks.endpoints.of_tenant(&tenant).await?.len() >= MAX_ENDPOINTS {
        return Err(ApiError::Conflict(format!(
            "a tenant has at most {MAX_ENDPOINTS} webhook endpoints"
        )));
    }
    let now = Utc::now();
    let endpoint = WebhookEndpoint {
        tenant_id: tenant,
        endpoint_id: format!("we_{}", uuid::Uuid::new_v4().simple()),
        url: body.url,
        event_types: body.event_types,
        description: body.description.unwrap_or_default(),
        enabled: body.enabled.unwrap_or(true),
        secret: new_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
    };
    state.webhooks.endpoints.put(&endpoint).await?;
    answer(StatusCode::CREATED, view(&endpoint, true))
}

/// `GET /v1/webhook_endpoints?limit=&starting_after=`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let all = state.webhooks.endpoints.of_tenant(&tenant).await?;
    let items =
        crate::request::after_cursor(all, q.starting_after.as_deref(), |e| e.endpoint_id.as_str())?;
    let views: Vec<Value> = items
        .iter()
        .take(limit + 1)
        .map(|e| view(e, false))
        .collect();
    Ok(Json(page(views, limit)?))
}

/// `GET /v1/webhook_endpoints/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&existing(&state, &tenant, &id).await?, false)))
}

/// `POST /v1/webhook_endpoints/{id}`: change the URL, the types, the description or `enabled`.
pub async fn update(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(_): ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> Result<Answer, ApiError> {
    let current = existing(&state, &tenant, &id).await?;
    let mut updated = body.apply(current.clone())?;
    if updated != current {
        updated.updated_at = Utc::now();
        state.webhooks.endpoints.put(&updated).await?;
    }
    answer(StatusCode::OK, view(&updated, false))
}

/// `POST /v1/webhook_endpoints/{id}/rotate_secret`: a new secret, shown once; the old one keeps signing for
/// `webhooks.secret_rotation_overlap` (a secret rotated out before is dropped).
pub async fn rotate_secret(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Answer, ApiError> {
    let mut e = existing(&state, &tenant, &id).await?;
    let now = Utc::now();
    let overlap =
        chrono::Duration::from_std(state.webhooks.rotation_overlap).map_err(anyhow::Error::from)?;
    e.previous_secret = Some(std::mem::replace(&mut e.secret, new_secret()));
    e.previous_secret_expires_at = Some(now + overlap);
    e.updated_at = now;
    state.webhooks.endpoints.put(&e).await?;
    answer(StatusCode::OK, view(&e, true))
}

/// `DELETE /v1/webhook_endpoints/{id}`: its pending deliveries are given up at their next attempt.
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &tenant, &id).await?;
    state.webhooks.endpoints.delete(&tenant, &id).await?;
    Ok(Json(
        json!({"id": id, "object": "webhook_endpoint", "deleted": true}),
    ))
}

/// `GET /v1/webhook_endpoints/{id}/deliveries?limit=&starting_after=`: the delivery log, newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    existing(&state, &tenant, &id).await?;
    let items = state
        .webhooks
        .deliveries
        .page(&tenant, &id, limit as i32 + 1, q.starting_after.as_deref())
        .await?;
    let Some(items) = items else {
        return Err(unknown_cursor(
            q.starting_after.as_deref().unwrap_or_default(),
        ));
    };
    let views: Vec<Value> = items.iter().map(delivery_view).collect();
    Ok(Json(page(views, limit)?))
}

/// `POST /v1/webhook_endpoints/{id}/deliveries/{delivery_id}/redeliver`: send a delivery again with a fresh retry
/// schedule. 202: the dispatcher picks the request up within `webhooks.redeliver_poll`.
pub async fn redeliver(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((id, delivery_id)): Path<(String, String)>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Answer, ApiError> {
    let endpoint = existing(&state, &tenant, &id).await?;
    let delivery = state
        .webhooks
        .deliveries
        .get(&tenant, &id, &delivery_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no delivery {delivery_id:?} of this endpoint"))
        })?;
    if !endpoint.enabled {
        return Err(ApiError::Conflict(
            "the endpoint is disabled: enable it first".into(),
        ));
    }
    let requested_at: DateTime<Utc> = Utc::now();
    let request = Redelivery {
        source: delivery.source.clone(),
        requested_at,
        request_id: format!("whr_{}", uuid::Uuid::new_v4().simple()),
        tenant_id: tenant,
        endpoint_id: id,
        delivery_id,
    };
    state.webhooks.redeliveries.put(&request).await?;
    answer(
        StatusCode::ACCEPTED,
        json!({
            "id": request.request_id,
            "object": "webhook_redelivery",
            "endpoint_id": request.endpoint_id,
            "delivery_id": request.delivery_id,
            "event_id": delivery.event_id,
            "requested_at": requested_at,
            "status": "pending",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn refused(e: ApiError) -> (StatusCode, Vec<String>) {
        match e {
            ApiError::Fields { status, params } => {
                (status, params.into_iter().map(|p| p.name).collect())
            }
            other => panic!("{other:?}"),
        }
    }

    fn create(body: &str) -> Result<CreateEndpoint, ApiError> {
        parse_json::<CreateEndpoint>(body.as_bytes())?.validate()
    }

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        for ok in [
            "https://example.com/hooks",
            "http://127.0.0.1:9000/x?y=1",
            "https://[::1]:8443/",
        ] {
            let body = format!(r#"{{"url": "{ok}", "event_types": ["*"]}}"#);
            assert!(create(&body).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://example.com/x",
            "/relative/path",
            "example.com/hooks",
            "https://user:pw@example.com/",
            "https://exa mple.com/",
            "",
            "mailto:a@b.c",
        ] {
            let body = format!(r#"{{"url": "{bad}", "event_types": ["*"]}}"#);
            let (status, names) = refused(create(&body).unwrap_err());
            assert_eq!(
                (status, names),
                (StatusCode::BAD_REQUEST, vec!["url".into()]),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_types_are_known_unique_or_star_alone() {
        let ok = create(
            r#"{"url": "https://a.b/", "event_types": ["invoice.finalized", "payment.failed"]}"#,
        );
        assert!(ok.is_ok());
        let (status, names) = refused(
            create(r#"{"url": "https://a.b/", "event_types": ["invoice.finalized", "invoice.paid_twice"]}"#)
                .unwrap_err(),
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(names, ["event_types[1]"]);
        let (_, names) = refused(
            create(r#"{"url": "https://a.b/", "event_types": ["*", "payment.failed"]}"#)
                .unwrap_err(),
        );
        assert_eq!(names, ["event_types[0]"]);
        let (_, names) =
            refused(create(r#"{"url": "https://a.b/", "event_types": []}"#).unwrap_err());
        assert_eq!(names, ["event_types"]);
        let (_, names) = refused(
            create(
                r#"{"url": "https://a.b/", "event_types": ["payment.failed", "payment.failed"]}"#,
            )
            .unwrap_err(),
        );
        assert_eq!(names, ["event_types[1]"]);
        // Every refused field at once.
        let (_, names) = refused(create(r#"{"url": "nope", "event_types": ["x"]}"#).unwrap_err());
        assert_eq!(names, ["url", "event_types[0]"]);
    }

    #[test]
    fn secrets_are_fresh_and_reads_show_a_prefix() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64, "{a}");
        let t = Utc::now();
        let e = WebhookEndpoint {
            tenant_id: "t".into(),
            endpoint_id: "we_1".into(),
            url: "https://a.b/".into(),
            event_types: vec!["*".into()],
            description: String::new(),
            enabled: true,
            secret: a.clone(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: t,
            updated_at: t,
        };
        let read = view(&e, false);
        assert_eq!(read["secret_prefix"], a[..10]);
        assert!(read.get("secret").is_none());
        assert!(!read.to_string().contains(&a));
        assert_eq!(view(&e, true)["secret"], a);
    }

    #[test]
    fn updates_change_only_what_is_given() {
        let t = Utc::now();
        let e = WebhookEndpoint {
            tenant_id: "t".into(),
            endpoint_id: "we_1".into(),
            url: "https://a.b/".into(),
            event_types: vec!["*".into()],
            description: "d".into(),
            enabled: true,
            secret: new_secret(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: t,
            updated_at: t,
        };
        let u: UpdateEndpoint = parse_json(br#"{"enabled": false}"#).unwrap();
        let after = u.apply(e.clone()).unwrap();
        assert!(!after.enabled);
        assert_eq!(
            (after.url.as_str(), after.description.as_str()),
            ("https://a.b/", "d")
        );
        let u: UpdateEndpoint = parse_json(br#"{"url": "gopher://x"}"#).unwrap();
        assert_eq!(refused(u.apply(e).unwrap_err()).1, ["url"]);
    }
}
