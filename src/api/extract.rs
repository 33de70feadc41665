//! Request extractors whose rejections are [`ApiError`]s, so a bad body,
//! path or query answers in the API's JSON error shape.
//!
//! - [`JsonBody`]: the body as JSON. Too large → 413; not JSON → 400; JSON of
//!   the wrong shape or types → 422. The `Content-Type` is not checked: a
//!   client that forgot it still means JSON, and a 415 would help nobody.
//! - [`IdPath`]: a UUID path segment; not a UUID → 422, like every other
//!   malformed field.
//! - [`QueryParams`]: the query string; wrong types → 422.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// The request body, parsed as JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // Reads at most `max_body_bytes` (the router's DefaultBodyLimit).
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.config.max_body_bytes)
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| match error.classify() {
                serde_json::error::Category::Data => {
                    ApiError::invalid("invalid_body", error.to_string())
                }
                _ => ApiError::MalformedJson(error.to_string()),
            })
    }
}

/// One UUID path parameter.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::invalid("invalid_id", r.body_text()))?;
        Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::invalid("invalid_id", "the id in the path is not a UUID"))
    }
}

/// The query string, deserialized.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|r| ApiError::invalid("invalid_query", r.body_text()))
    }
}
