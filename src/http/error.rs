//! The one error type handlers return, and the only `IntoResponse` for errors: every error is
//! `{"error": "<message>"}` with its status. Messages never carry key material.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::broker::Invalid;
use crate::writer::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request was not answered within the request timeout (`REQUEST_TIMEOUT`); the server
    /// answers it, outside any handler.
    #[error("request timed out")]
    RequestTimeout,
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but not what its idempotency key was first sent with.
    #[error("{0}")]
    Unprocessable(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no key available for feature")]
    NoKeyAvailable { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// `MAX_WAITERS` requests already wait for a key: 503 with `Retry-After: 1`.
    #[error("too many waiting requests")]
    TooManyWaiters,
    /// A request waiting for a key when the server began to shut down.
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NoKeyAvailable { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::TooManyWaiters | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// `{"error": "<message>"}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": self.to_string() }))
            .expect("a string map always serializes")
    }
}

/// A JSON response with a body already encoded.
pub fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Waiters turned away (too many, or shutting down) are refusals by design, like a 429:
        // a burst of them is no failure to log line by line.
        if status.is_server_error()
            && !matches!(self, ApiError::TooManyWaiters | ApiError::ShuttingDown)
        {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = json_response(status, self.body());
        let retry_after_secs = match self {
            ApiError::NoKeyAvailable { retry_after_secs } => Some(retry_after_secs),
            ApiError::TooManyWaiters => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        ApiError::from(&err)
    }
}

impl From<&WriteError> for ApiError {
    fn from(err: &WriteError) -> Self {
        match err {
            WriteError::TierExists(_)
            | WriteError::TierHasKeys
            | WriteError::NoBudget
            | WriteError::UnitDiffers(_) => ApiError::Conflict(err.to_string()),
            WriteError::Invalid(_) => ApiError::BadRequest(err.to_string()),
            WriteError::TierNotFound(_)
            | WriteError::KeyNotFound(_)
            | WriteError::ConsumerNotFound(_) => ApiError::NotFound(err.to_string()),
            WriteError::IdempotencyKeyReused => ApiError::Unprocessable(err.to_string()),
            WriteError::Stopped => ApiError::Unavailable(err.to_string()),
            WriteError::Storage(_) | WriteError::Unsaved(_) => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::BadRequest(invalid.0)
    }
}
