//! `Idempotency-Key` on every POST (Stripe's rules). The key is claimed in `api_idempotency` with a lightweight
//! transaction before the request runs, together with a SHA-256 of the request (method, path, body):
//!
//! - a key seen for the first time runs the request; a success (2xx, including a 202 "pending") is stored and a
//!   retry gets the same status and body back, with `Idempotent-Replayed: true`;
//! - a request that failed is never stored: every write validates before it publishes, so an error means nothing
//!   was published, and the key is released for the client to fix the request and retry with it;
//! - the same key with another request → 409; a key whose request is still running → 409.
//!
//! Keys are kept 24 hours (the table's TTL). The request runs in its own task, so a client that hangs up does not
//! leave the key claimed.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use billing_runtime::http::{Problem, Tenant, PROBLEM_JSON};
use billing_store::billing::IdempotencyClaim;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::request::MAX_BODY;
use crate::AppState;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key.
pub const MAX_KEY_CHARS: usize = 255;

/// What to do with a request, given what its key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The key is this request's: run it.
    Run,
    /// The same request was answered: send that answer again.
    Replay {
        /// Stored status.
        status: u16,
        /// Stored body.
        body: String,
    },
    /// 409 with this reason.
    Conflict(String),
}

/// Decide from the claim's outcome and this request's hash.
pub fn decide(claim: IdempotencyClaim, request_hash: &str) -> Decision {
    match claim {
        IdempotencyClaim::Claimed => Decision::Run,
        IdempotencyClaim::InFlight { request_hash: h } if h == request_hash => Decision::Conflict(
            "a request with this key is still being processed; retry later".into(),
        ),
        IdempotencyClaim::Answered {
            request_hash: h,
            status,
            body,
        } if h == request_hash => Decision::Replay { status, body },
        IdempotencyClaim::InFlight { .. } | IdempotencyClaim::Answered { .. } => {
            Decision::Conflict(
                "this key was already used for another request (method, path or body differ)"
                    .into(),
            )
        }
    }
}

/// Whether an answer with this status is kept for the key (`true`) or the key released (`false`).
pub fn keep_answer(status: StatusCode) -> bool {
    status.is_success()
}

/// SHA-256 (hex) of method, path and body.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0u8]);
    h.update(path.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key: 1 to 255 visible ASCII characters.
pub fn check_key(raw: &HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::malformed(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        )
    };
    let key = raw.to_str().map_err(|_| bad())?.trim();
    if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(key.to_owned())
}

/// The stored answer, as it was sent.
pub fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_client_error() || status.is_server_error() {
        PROBLEM_JSON
    } else {
        "application/json"
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// The middleware: applies to POSTs that carry the header; everything else passes through.
pub async fn middleware(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    let key = check_key(raw)?;
    let (mut parts, body) = req.into_parts();
    let Tenant(tenant) = Tenant::from_request_parts(&mut parts, &()).await?;
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    let hash = request_hash(parts.method.as_str(), parts.uri.path(), &bytes);
    let claim = state
        .billing
        .claim_idempotency_key(&tenant, &key, &hash)
        .await?;
    match decide(claim, &hash) {
        Decision::Run => {}
        Decision::Replay { status, body } => return Ok(replay(status, body)),
        Decision::Conflict(reason) => {
            return Err(ApiError::conflict_field("Idempotency-Key", reason));
        }
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        let (parts, body) = resp.into_parts();
        let body = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                release(&state, &tenant, &key).await;
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "reading the answer failed: {e}"
                )));
            }
        };
        if keep_answer(parts.status) {
            let text = String::from_utf8_lossy(&body);
            if let Err(e) = state
                .billing
                .complete_idempotency_key(&tenant, &key, parts.status.as_u16(), &text)
                .await
            {
                tracing::error!(error = %e, tenant, key, "storing the answer of an idempotency key failed");
            }
        } else {
            release(&state, &tenant, &key).await;
        }
        Ok(Response::from_parts(parts, Body::from(body)))
    });
    task.await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("request task failed: {e}")))?
}

/// The key that reserves an id of a kind. It holds a space, which a client's key cannot, so the two never meet.
pub fn reservation_key(kind: &str, id: &str) -> String {
    format!("create {kind} {id}")
}

/// Reserve the id of a resource being created, so that two concurrent creations of one id cannot both publish
/// (the read model only shows the first once the invoicer has materialized it). 409 naming `field` when the id is
/// already reserved. The reservation lasts the table's 24 hours, by when the resource is materialized and the
/// existence check answers.
pub async fn reserve(
    state: &AppState,
    tenant: &str,
    kind: &str,
    id: &str,
    field: &str,
) -> Result<(), ApiError> {
    let key = reservation_key(kind, id);
    match state
        .billing
        .claim_idempotency_key(tenant, &key, "reserved")
        .await?
    {
        IdempotencyClaim::Claimed => Ok(()),
        _ => Err(ApiError::conflict_field(
            field,
            format!(
                "a {} {id:?} is already being created",
                kind.replace('_', " ")
            ),
        )),
    }
}

/// Undo [`reserve`] when the creation could not be published.
pub async fn unreserve(state: &AppState, tenant: &str, kind: &str, id: &str) {
    release(state, tenant, &reservation_key(kind, id)).await;
}

async fn release(state: &AppState, tenant: &str, key: &str) {
    if let Err(e) = state.billing.release_idempotency_key(tenant, key).await {
        tracing::warn!(error = %e, tenant, key, "releasing an idempotency key failed; it expires in 24 h");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_key_runs_and_an_answered_one_replays_only_the_same_request() {
        let h = request_hash("POST", "/v1/customers", br#"{"customer_id":"c"}"#);
        assert_eq!(h.len(), 64);
        assert_eq!(decide(IdempotencyClaim::Claimed, &h), Decision::Run);
        let answered = IdempotencyClaim::Answered {
            request_hash: h.clone(),
            status: 201,
            body: "{}".into(),
        };
        assert_eq!(
            decide(answered.clone(), &h),
            Decision::Replay {
                status: 201,
                body: "{}".into()
            }
        );
        let other = request_hash("POST", "/v1/customers", br#"{"customer_id":"d"}"#);
        assert!(
            matches!(decide(answered, &other), Decision::Conflict(r) if r.contains("another request"))
        );
        assert!(matches!(
            decide(IdempotencyClaim::InFlight { request_hash: h.clone() }, &h),
            Decision::Conflict(r) if r.contains("still being processed")
        ));
        assert!(matches!(
            decide(IdempotencyClaim::InFlight { request_hash: h }, &other),
            Decision::Conflict(_)
        ));
    }

    #[test]
    fn the_hash_covers_method_path_and_body() {
        let a = request_hash("POST", "/v1/customers", b"{}");
        assert_eq!(a, request_hash("POST", "/v1/customers", b"{}"));
        assert_ne!(a, request_hash("POST", "/v1/customers/x", b"{}"));
        assert_ne!(a, request_hash("PUT", "/v1/customers", b"{}"));
        assert_ne!(a, request_hash("POST", "/v1/customers", b"{ }"));
        // The separator keeps path and body apart.
        assert_ne!(
            request_hash("POST", "/a", b"b"),
            request_hash("POST", "/ab", b"")
        );
    }

    #[test]
    fn successes_are_kept_and_failures_release_the_key() {
        assert!(keep_answer(StatusCode::CREATED));
        assert!(keep_answer(StatusCode::ACCEPTED));
        assert!(keep_answer(StatusCode::OK));
        assert!(!keep_answer(StatusCode::UNPROCESSABLE_ENTITY));
        assert!(!keep_answer(StatusCode::CONFLICT));
        assert!(!keep_answer(StatusCode::INTERNAL_SERVER_ERROR));
    }

    #[test]
    fn keys_are_visible_ascii() {
        // Reservation keys hold spaces, so no client key can take their place.
        let reserved = reservation_key("customer", "cus-1");
        assert!(check_key(&HeaderValue::from_str(&reserved).unwrap()).is_err());
        assert_eq!(
            check_key(&HeaderValue::from_static(" k-1 ")).unwrap(),
            "k-1"
        );
        assert!(check_key(&HeaderValue::from_static("")).is_err());
        assert!(check_key(&HeaderValue::from_static("a b")).is_err());
        assert!(check_key(&HeaderValue::from_str(&"k".repeat(256)).unwrap()).is_err());
    }

    #[tokio::test]
    async fn replays_carry_the_stored_status_and_a_marker() {
        let r = replay(201, r#"{"customer_id":"c"}"#.into());
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()[REPLAYED], "true");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"customer_id":"c"}"#);
    }
}
