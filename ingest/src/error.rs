//! Whole-request errors, rendered as RFC 9457 `application/problem+json`. Per-event problems are not errors of
//! the request: they go into the per-event results of a 200 answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The request body cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct Problem {
    /// HTTP status (4xx).
    pub status: StatusCode,
    /// What the client must fix.
    pub detail: String,
}

impl Problem {
    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }

    /// 413 Content Too Large.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: detail.into(),
        }
    }

    /// 415 Unsupported Media Type.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            detail: detail.into(),
        }
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
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}
