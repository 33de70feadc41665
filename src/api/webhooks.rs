//! `/v1/webhooks`: a tenant's endpoints for job events (docs/webhooks.md).
//! Create (the signing secret is shown once), list (never the secrets),
//! delete. Another tenant's webhook is a 404 exactly like a missing one.

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{IdPath, JsonBody};
use super::observe::observed;
use super::AppState;
use crate::webhooks::{store, EVENT_TYPES, MAX_URL_BYTES, MAX_WEBHOOKS_PER_TENANT};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The `/v1/webhooks` routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhooks",
            observed("/v1/webhooks", post(create).get(list)),
        )
        .route(
            "/v1/webhooks/{id}",
            observed("/v1/webhooks/{id}", delete(remove)),
        )
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewWebhookRequest {
    /// Where events are POSTed: an absolute `http` or `https` URL with a
    /// host, at most 2048 bytes, without user:password.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types to receive, among `job.completed`, `job.failed` and
    /// `job.cancelled`; omitted or null: all three.
    #[schema(max_items = 3, min_items = 1)]
    pub events: Option<Vec<String>>,
}

/// A webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResponse {
    /// The webhook's id.
    pub id: Uuid,
    /// The endpoint POSTed to.
    pub url: String,
    /// The events it is told of.
    pub events: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A webhook just created, with its signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhookResponse {
    /// The webhook's id.
    pub id: Uuid,
    /// The endpoint POSTed to.
    pub url: String,
    /// The events it is told of.
    pub events: Vec<String>,
    /// `whsec_…`: the HMAC-SHA256 key of the `Skipjack-Signature` header.
    /// Shown this once; never listed.
    pub secret: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// The caller's webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Oldest first.
    pub webhooks: Vec<WebhookResponse>,
}

impl From<store::Webhook> for WebhookResponse {
    fn from(w: store::Webhook) -> Self {
        WebhookResponse {
            id: w.id,
            url: w.url,
            events: w.events,
            created_at: w.created_at,
        }
    }
}

/// Checks a webhook URL: absolute http(s) with a host, no credentials, at
/// most [`MAX_URL_BYTES`].
pub fn validate_url(url: &str) -> ApiResult<()> {
    let invalid = |message: &str| ApiError::invalid("invalid_url", message);
    if url.is_empty() || url.len() > MAX_URL_BYTES {
        return Err(invalid(&format!("url must be 1 to {MAX_URL_BYTES} bytes")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("url is not an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("url must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("url must not carry a user name or password"));
    }
    Ok(())
}

/// Checks the event filter; `None` means every event type. Returns the
/// types in canonical order, without repeats.
pub fn validate_events(events: Option<&[String]>) -> ApiResult<Vec<String>> {
    let Some(events) = events else {
        return Ok(EVENT_TYPES.iter().map(|e| (*e).to_owned()).collect());
    };
    if events.is_empty() {
        return Err(ApiError::invalid(
            "invalid_events",
            "events must name at least one event type (or be omitted for all)",
        ));
    }
    if let Some(unknown) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        let shown: String = unknown.chars().take(50).collect();
        return Err(ApiError::invalid(
            "invalid_events",
            format!(
                "unknown event type {shown:?}; known: {}",
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    Ok(EVENT_TYPES
        .iter()
        .filter(|t| events.iter().any(|e| e == *t))
        .map(|t| (*t).to_owned())
        .collect())
}

/// Registers a webhook. Its deliveries are signed with the returned
/// secret, which is shown only here.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = NewWebhookRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `secret` is shown this once", body = CreatedWebhookResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 409, description = "`too_many_webhooks`: the tenant already has 10 webhooks", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`invalid_url` (not absolute http/https with a host, over \
2048 bytes, or with user:password) or `invalid_events` (empty, or not among job.completed, \
job.failed, job.cancelled)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<NewWebhookRequest>,
) -> ApiResult<(StatusCode, Json<CreatedWebhookResponse>)> {
    validate_url(&req.url)?;
    let events = validate_events(req.events.as_deref())?;
    let created = store::create(&state.pool, caller.tenant, &req.url, &events)
        .await
        .map_err(|e| match e {
            store::CreateError::TooMany(max) => ApiError::Conflict {
                code: "too_many_webhooks",
                message: format!("a tenant may have at most {max} webhooks; delete one first"),
            },
            store::CreateError::Database(e) => e.into(),
        })?;
    debug_assert_eq!(MAX_WEBHOOKS_PER_TENANT, 10, "the OpenAPI text says 10");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhookResponse {
            id: created.webhook.id,
            url: created.webhook.url,
            events: created.webhook.events,
            secret: created.secret,
            created_at: created.webhook.created_at,
        }),
    ))
}

/// The caller's webhooks, oldest first, without their secrets.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's webhooks (at most 10)", body = WebhookList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<WebhookList>> {
    let webhooks = store::list(&state.pool, caller.tenant).await?;
    Ok(Json(WebhookList {
        webhooks: webhooks.into_iter().map(Into::into).collect(),
    }))
}

/// Deletes a webhook. Deliveries still queued for it are skipped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if store::delete(&state.pool, caller.tenant, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(validate_url("https://example.com/hook?x=1").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/").is_ok());
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
        assert!(validate_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn events() {
        assert_eq!(validate_events(None).unwrap().len(), 3);
        let some = vec![
            "job.failed".to_owned(),
            "job.completed".to_owned(),
            "job.failed".to_owned(),
        ];
        assert_eq!(
            validate_events(Some(&some)).unwrap(),
            vec!["job.completed", "job.failed"]
        );
        assert!(validate_events(Some(&[])).is_err());
        assert!(validate_events(Some(&["job.started".to_owned()])).is_err());
    }
}
