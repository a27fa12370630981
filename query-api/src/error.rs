//! The one error type of the API, rendered as RFC 9457 `application/problem+json`. A 4xx says what is wrong; a
//! 5xx body stays generic and the detail goes to the log.

use axum::response::{IntoResponse, Response};
use billing_runtime::http::Problem;

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
    /// A problem decided elsewhere (e.g. by the tenant extractor).
    #[error("{0}")]
    Problem(Problem),
    /// A dependency failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Problem(p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(d) => Problem::bad_request(d),
            ApiError::NotFound(d) => Problem::not_found(d),
            ApiError::RateLimited(secs) => Problem::rate_limited(secs),
            ApiError::Problem(p) => p,
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                Problem::internal()
            }
        }
        .into_response()
    }
}
