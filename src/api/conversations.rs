//! `/v1/conversations`: start a conversation, read its messages; and the
//! resolver that picks the conversation a chat submission belongs to.

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{IdPath, JsonBody, QueryParams};
use super::observe::observed;
use super::validate;
use super::AppState;
use crate::chat::store;
use crate::ids::{ConversationId, JobId};
use crate::llm::Role;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The `/v1/conversations` routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/conversations",
            observed("/v1/conversations", post(create)),
        )
        .route(
            "/v1/conversations/{id}/messages",
            observed("/v1/conversations/{id}/messages", get(messages)),
        )
}

/// Body of `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewConversationRequest {
    /// The application's user id, 1 to 256 characters.
    pub user_id: String,
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationResponse {
    /// The conversation's id.
    pub conversation_id: Uuid,
    /// The application's user it belongs to.
    pub user_id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Query of `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct MessagesQuery {
    /// When given, the conversation must belong to this user (else 404).
    pub user_id: Option<String>,
}

/// One message of a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The chat job whose completion appended this message.
    pub job_id: Option<Uuid>,
    /// The model that wrote an assistant message; absent for user messages
    /// and for replies written before the server recorded models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// The messages of a conversation, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagesResponse {
    /// The conversation's id.
    pub conversation_id: Uuid,
    /// The application's user it belongs to.
    pub user_id: String,
    /// Oldest first.
    pub messages: Vec<MessageOut>,
}

/// Starts a new conversation for a user (the default conversation, used
/// when a chat request names none, needs no creating).
#[utoipa::path(
    post, path = "/v1/conversations", tag = "conversations",
    request_body = NewConversationRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ConversationResponse,
         headers(("Location" = String, description = "The conversation's messages"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid user_id", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<NewConversationRequest>,
) -> ApiResult<(StatusCode, HeaderMap, Json<ConversationResponse>)> {
    validate::user_id(&req.user_id)?;
    let (id, user_id, created_at) =
        store::create_conversation(&state.pool, caller.tenant, &req.user_id).await?;
    state
        .conversations
        .remember_owner(caller.tenant, id, &user_id);
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/conversations/{id}/messages")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ConversationResponse {
            conversation_id: id.0,
            user_id,
            created_at,
        }),
    ))
}

/// The messages of one of the tenant's conversations, in order. Another
/// tenant's conversation is a 404, like one that does not exist.
#[utoipa::path(
    get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id"), MessagesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The messages", body = MessagesResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such conversation for this tenant", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    QueryParams(query): QueryParams<MessagesQuery>,
) -> ApiResult<Json<MessagesResponse>> {
    let id = ConversationId(id);
    let owner = store::conversation_user(&state.pool, id, caller.tenant)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    if query.user_id.as_deref().is_some_and(|u| u != owner) {
        return Err(ApiError::NotFound("conversation"));
    }
    let messages = store::list_messages_at(&state.pool, id, state.config.schema)
        .await?
        .into_iter()
        .map(|m| MessageOut {
            role: m.role,
            content: m.content,
            job_id: m.job_id.map(|j: JobId| j.0),
            model: m.model,
            created_at: m.created_at,
        })
        .collect();
    Ok(Json(MessagesResponse {
        conversation_id: id.0,
        user_id: owner,
        messages,
    }))
}
