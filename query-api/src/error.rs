//! The one error type of the API, rendered as RFC 9457 `application/problem+json`. A 4xx says what is wrong (and,
//! for a bad field, names it in `invalid_params`); a 5xx body stays generic and the detail goes to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use billing_runtime::http::{Problem, PROBLEM_JSON};

/// One bad request member (RFC 9457's `invalid_params` extension): the field's name (a JSON path such as
/// `charges[1].properties`, or a query parameter) and why it is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvalidParam {
    /// Field, as the client spelled it.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidParam {
    /// A bad field.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidParam {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The resource does not exist for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (a duplicate id, a canceled subscription...).
    #[error("{0}")]
    Conflict(String),
    /// Some fields are refused: 400 for a body that is not the expected JSON, 422 for values that cannot be
    /// accepted, 409 for a value that conflicts with what exists. The detail lists every field.
    #[error("{}", describe(.params))]
    Fields {
        /// Status to answer with.
        status: StatusCode,
        /// Every refused field.
        params: Vec<InvalidParam>,
    },
    /// Too many requests; retry after the given seconds.
    #[error("rate limit exceeded; retry in {0} s")]
    RateLimited(u64),
    /// A problem decided elsewhere (e.g. by the tenant extractor).
    #[error("{0}")]
    Problem(Problem),
    /// A dependency failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn describe(params: &[InvalidParam]) -> String {
    params
        .iter()
        .map(|p| format!("{}: {}", p.name, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// 422: one field holds a value that cannot be accepted.
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::field(StatusCode::UNPROCESSABLE_ENTITY, name, reason)
    }

    /// 400: one field (or query parameter) is malformed.
    pub fn malformed(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::field(StatusCode::BAD_REQUEST, name, reason)
    }

    /// 409: one field conflicts with what exists (e.g. a duplicate id).
    pub fn conflict_field(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::field(StatusCode::CONFLICT, name, reason)
    }

    /// One bad field with this status.
    pub fn field(status: StatusCode, name: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Fields {
            status,
            params: vec![InvalidParam::new(name, reason)],
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Fields { status, .. } => *status,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Problem(p) => p.status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Problem(p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(d) => Problem::bad_request(d).into_response(),
            ApiError::NotFound(d) => Problem::not_found(d).into_response(),
            ApiError::Conflict(d) => Problem::new(StatusCode::CONFLICT, d).into_response(),
            ApiError::Fields { status, params } => with_params(status, &params),
            ApiError::RateLimited(secs) => Problem::rate_limited(secs).into_response(),
            ApiError::Problem(p) => p.into_response(),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                Problem::internal().into_response()
            }
        }
    }
}

/// The runtime's problem document with the `invalid_params` member added (the shared renderer has no extension
/// members yet).
fn with_params(status: StatusCode, params: &[InvalidParam]) -> Response {
    let problem = Problem::new(status, describe(params));
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": problem.detail,
        "invalid_params": params,
    });
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn field_errors_name_every_field_in_detail_and_invalid_params() {
        let err = ApiError::Fields {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            params: vec![
                InvalidParam::new("currency", "unknown currency code \"XXX\""),
                InvalidParam::new("billing_anchor_day", "32 is not in 1..=31"),
            ],
        };
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["invalid_params"][1]["name"], "billing_anchor_day");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("currency:") && detail.contains("billing_anchor_day:"),
            "{detail}"
        );
    }
}
