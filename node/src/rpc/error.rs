//! The one error shape every endpoint answers with: `{"error": {"code", "message"}}` and an HTTP status (CCF's).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::service::ExecError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (CCF's names where CCF has one).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request must run on the primary: the forwarding layer sends it there instead of answering.
    pub forward: bool,
    /// Seconds a client should wait before retrying (`Retry-After`, sent with 503/429 when a bound is reached).
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    /// Any error with a status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            forward: false,
            retry_after_s: None,
        }
    }
    /// 400 InvalidInput.
    pub fn invalid_input(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "InvalidInput", message)
    }
    /// 401 InvalidAuthenticationInfo.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationInfo", message)
    }
    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    /// 404 ResourceNotFound.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFound", message)
    }
    /// 503 NotPrimary, marked for the forwarding layer to send the request to the primary instead.
    pub fn not_primary() -> ApiError {
        ApiError {
            forward: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NotPrimary",
                "this node is not the primary; retry",
            )
        }
    }
    /// 503 with `Retry-After`: a bounded queue or resource is full; the request did nothing and can be retried
    /// (CCF's clients retry 503s after `Retry-After`).
    pub fn busy(code: &'static str, message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
    /// 429 TooManyRequests with `Retry-After`: this client exceeded a per-client rate limit.
    pub fn too_many_requests(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
        }
    }
    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, Json(body)).into_response();
        if self.forward {
            response.extensions_mut().insert(super::forward::ForwardToPrimary);
        }
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

/// A call the Raft thread did not take.
impl From<crate::service::AskError> for ApiError {
    fn from(e: crate::service::AskError) -> ApiError {
        match e {
            crate::service::AskError::Busy => ApiError::busy("ServiceBusy", e.to_string(), 1),
            crate::service::AskError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            ),
        }
    }
}

/// A handler that cannot fail.
impl From<std::convert::Infallible> for ApiError {
    fn from(e: std::convert::Infallible) -> ApiError {
        match e {}
    }
}

/// A failed transaction: the handler's own error (anything that converts to an [`ApiError`]), or why it could not run.
impl<E: Into<ApiError> + std::fmt::Display> From<ExecError<E>> for ApiError {
    fn from(e: ExecError<E>) -> ApiError {
        match e {
            ExecError::Handler(e) => e.into(),
            ExecError::NotPrimary => ApiError::not_primary(),
            ExecError::Busy => ApiError::busy("ServiceBusy", e.to_string(), 1),
            ExecError::TooManyConflicts => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TransactionConflict",
                e.to_string(),
            ),
            ExecError::Unavailable(reason) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", reason)
            }
        }
    }
}
