//! [`ApiError`]: every failure a handler can return, rendered in OpenAI's error shape
//! `{"error":{"message","type","param","code"}}` with the matching HTTP status.
//!
//! The conversion to a response does not log: it stores the error in the response's extensions
//! and the logging middleware ([`crate::middleware`]) reports it, so that rendering has no side
//! effects. Server-side failures (5xx) render as "internal error" and never show database text.

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use fusillade::StorageError;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

/// The OpenAI error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields of an OpenAI error. All four are always present (`null` when not applicable).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault.
    pub param: Option<&'static str>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The parameter at fault.
        param: Option<&'static str>,
        /// A machine-readable code.
        code: Option<&'static str>,
    },
    /// 401: no API key, or an unknown one.
    #[error("{message}")]
    Unauthorized {
        /// What is wrong.
        message: String,
        /// `missing_api_key` or `invalid_api_key`.
        code: &'static str,
    },
    /// 404: no such object for this tenant (other tenants' objects are not found either).
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// The parameter naming it.
        param: Option<&'static str>,
    },
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the object is in a state where the operation does not apply.
    #[error("{0}")]
    Conflict(String),
    /// 413: the upload is larger than the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 413: a (JSON) request body is larger than the limit.
    #[error("{0}")]
    BodyTooLarge(String),
    /// 429: too much work at once; retry after the given seconds.
    #[error("{message}")]
    Busy {
        /// What is busy.
        message: String,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// 503: storage is unreachable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// 500: anything else. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the parameter at fault.
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    /// A 404 for an object of kind `kind` (`File`, `Batch`) with `id`, in OpenAI's words.
    pub fn no_such(kind: &str, id: &str, param: &'static str) -> Self {
        ApiError::NotFound {
            message: format!("No such {kind} object: {id}"),
            param: Some(param),
        }
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) | ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> ErrorDetail {
        let (kind, param, code) = match self {
            ApiError::BadRequest { param, code, .. } => ("invalid_request_error", *param, *code),
            ApiError::Unauthorized { code, .. } => ("authentication_error", None, Some(*code)),
            ApiError::NotFound { param, .. } => ("invalid_request_error", *param, None),
            ApiError::MethodNotAllowed => ("invalid_request_error", None, None),
            ApiError::Conflict(_) => ("invalid_request_error", None, Some("conflict")),
            ApiError::TooLarge(_) => (
                "invalid_request_error",
                Some("file"),
                Some("file_too_large"),
            ),
            ApiError::BodyTooLarge(_) => ("invalid_request_error", None, Some("request_too_large")),
            ApiError::Busy { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::Unavailable(_) | ApiError::Internal(_) => ("server_error", None, None),
        };
        let message = if self.status_code().is_server_error() {
            "internal error".to_string()
        } else {
            self.to_string()
        };
        ErrorDetail {
            message,
            kind,
            param,
            code,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(what) => ApiError::NotFound {
                message: format!("No such object: {what}"),
                param: None,
            },
            StorageError::Conflict(message) => ApiError::Conflict(message),
            StorageError::Rejected(input) => ApiError::BadRequest {
                message: input.to_string(),
                param: Some("file"),
                code: None,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The error a response carried, left in its extensions for the logging middleware.
#[derive(Debug, Clone)]
pub struct LoggedError(pub Arc<ApiError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = ErrorResponse {
            error: self.detail(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            // A state conflict will not resolve by itself: the SDK must not retry it.
            ApiError::Conflict(_) => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            ApiError::Busy { retry_after, .. } => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        if matches!(
            self,
            ApiError::Busy { .. } | ApiError::TooLarge(_) | ApiError::BodyTooLarge(_)
        ) {
            // The request body is left unread, so the server closes the connection after this
            // answer: saying so keeps the client from sending its next request on it.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
            .extensions_mut()
            .insert(LoggedError(Arc::new(self)));
        response
    }
}
