//! The one error type of the API, rendered as RFC 9457 `application/problem+json`. A 4xx says what is wrong; a
//! 5xx body stays generic and the detail goes to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The resource does not exist for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// Too many requests; retry after the given seconds.
    #[error("rate limit exceeded; retry in {0} s")]
    RateLimited(u64),
    /// A dependency failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "Bad request", d.clone()),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "Not found", d.clone()),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                self.to_string(),
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "the request could not be completed".into(),
                )
            }
        };
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut resp = (status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}
