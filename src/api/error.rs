//! The one place API errors become HTTP statuses.
//!
//! Every error answers `{"error": {"code", "message"}}`. Client mistakes say
//! what was wrong; internal errors are logged with their detail and shown
//! only as "internal error". Database trouble (no connection within the
//! pool's acquire timeout, a dropped connection, a server shutting down) is
//! a 503, so clients retry instead of giving up.

use crate::chat::resolver::ResolveError;
use crate::queue::QueueError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 401: no `Authorization: Bearer KEY`, or not a valid key.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// 404: no such resource for this tenant. Another tenant's resource is
    /// reported exactly like one that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404: the route is off by configuration; the message says how to
    /// turn it on.
    #[error("{0}")]
    Disabled(&'static str),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's state.
    #[error("{message}")]
    Conflict {
        /// The stable error code (`not_cancellable`, …).
        code: &'static str,
        /// What went wrong, for people.
        message: String,
    },
    /// 413: the body is larger than the configured limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: well-formed but invalid input (a field out of range, a bad id).
    #[error("{message}")]
    Invalid {
        /// The stable error code.
        code: &'static str,
        /// What went wrong, for people.
        message: String,
    },
    /// 429: the queue (global or the tenant's) is full; retry later.
    #[error("queue full ({scope} limit); retry in {retry_after_secs} s")]
    Backpressure {
        /// Which limit: `global` or `tenant`.
        scope: &'static str,
        /// The `Retry-After` given.
        retry_after_secs: u64,
    },
    /// 429: too many long-polls in flight (in this process or for this
    /// tenant); retry later or poll without `wait`.
    #[error("too many long-polls in flight ({scope} limit); retry in {retry_after_secs} s")]
    TooManyWaits {
        /// Which limit: `process` or `tenant`.
        scope: &'static str,
        /// The `Retry-After` given.
        retry_after_secs: u64,
    },
    /// 503: the database is unreachable or overloaded, or the process is
    /// shutting down.
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    /// 500: a bug or an unexpected database error; logged, never shown.
    #[error("internal error")]
    Internal(String),
}

/// Shorthand for handler results.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `malformed_json`, `unauthorized`,
    /// `not_found`, `disabled`, `method_not_allowed`, `not_cancellable`, `not_retryable`,
    /// `conversation_moved_on`, `idempotency_key_reused`, `too_many_webhooks`,
    /// `payload_too_large`, `invalid_*`,
    /// `queue_full`, `too_many_long_polls`, `unavailable`, `internal`.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

impl ApiError {
    /// A 422 with `code` and `message`.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::Disabled(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Backpressure { .. } | ApiError::TooManyWaits { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Disabled(_) => "disabled",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { code, .. } => code,
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Invalid { code, .. } => code,
            ApiError::Backpressure { .. } => "queue_full",
            ApiError::TooManyWaits { .. } => "too_many_long_polls",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// True for database failures that say "not now" rather than "wrong":
    /// no connection in time, a lost connection, a server going away.
    pub fn is_unavailable(error: &sqlx::Error) -> bool {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 53: insufficient resources
                // (too many connections, out of memory or disk);
                // 57P01..57P03: admin shutdown, crash shutdown, cannot
                // connect now.
                code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
            }),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if ApiError::is_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            ApiError::Unavailable("database unavailable")
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<ResolveError> for ApiError {
    fn from(error: ResolveError) -> Self {
        match error {
            ResolveError::NotFound => ApiError::NotFound("conversation"),
            ResolveError::Database(e) => e.into(),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::NotFound(_) | QueueError::LeaseLost(_) => ApiError::NotFound("job"),
            QueueError::NotCancellable { state, .. } => ApiError::Conflict {
                code: "not_cancellable",
                message: format!(
                    "the job is {state}; only queued or processing jobs can be cancelled"
                ),
            },
            QueueError::NotRetryable { state, detail, .. } => ApiError::Conflict {
                code: "not_retryable",
                message: if detail.is_empty() {
                    format!("the job is {state}; only failed or cancelled jobs can be retried")
                } else {
                    format!("the job is {state} and cannot be retried{detail}")
                },
            },
            QueueError::ConversationMovedOn(_) => ApiError::Conflict {
                code: "conversation_moved_on",
                message: "a later job of this job's conversation exists (queued, running or \
                          finished); retrying this one would run an older turn after a newer \
                          one. Submit the message again as a new turn instead"
                    .to_owned(),
            },
            QueueError::Invalid(message) => ApiError::Conflict {
                code: "conflict",
                message,
            },
            QueueError::Database(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Backpressure {
                retry_after_secs, ..
            }
            | ApiError::TooManyWaits {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
