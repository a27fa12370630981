//! What every HTTP service shares: the one `application/problem+json` renderer (RFC 9457), the request-id
//! middleware, and the [`Tenant`] extractor: a request's tenant is its API key's (decided by [`crate::auth::gate`]),
//! whatever the request says.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A header naming a tenant: optional, and when sent it must be the API key's tenant (else 403).
pub const TENANT_HEADER: &str = "x-tenant-id";

/// An error answer: status, a short title and a detail that says what the client must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong, for the client.
    pub detail: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// More headers of the answer (`WWW-Authenticate`, `RateLimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with this status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// The same problem with one more header in its answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 429 Too Many Requests, retry after `secs` (at least 1).
    pub fn rate_limited(secs: u64) -> Self {
        let secs = secs.max(1);
        Problem {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit exceeded; retry in {secs} s"),
            )
        }
    }

    /// 500 with a generic detail: the cause belongs in the log, not in the answer.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request could not be completed",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// The tenant a request acts for: its API key's. Only routes behind [`crate::auth::gate`] have one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<crate::auth::Principal>()
            .map(|p| Tenant(p.tenant_id.clone()))
            .ok_or_else(|| {
                tracing::error!(path = %parts.uri.path(), "a tenant's route without the API key gate");
                Problem::internal()
            })
    }
}

/// The header carrying a request's id.
pub const REQUEST_ID: &str = "x-request-id";

/// A request's id, in its extensions for the layers and handlers inside [`request_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Middleware giving every request an id: the caller's `X-Request-Id` when it is 1 to 128 visible ASCII characters,
/// else `req_<32 hex>`. It is echoed in the response's `X-Request-Id` and recorded on the span of every log line the
/// request writes, so a client's report and the logs meet.
pub async fn request_id(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        tenant = tracing::field::Empty
    );
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_render_as_problem_json_with_retry_after() {
        let resp = Problem::rate_limited(0).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
