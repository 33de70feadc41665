//! `/v1/chat`: submit a chat turn, read it (or long-poll it), cancel it,
//! retry it.

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{IdPath, JsonBody, QueryParams};
use super::observe::observed;
use super::{validate, AppState, MAX_WAIT_SECONDS};
use crate::chat::{ChatPayload, ChatResult, CHAT_KIND};
use crate::ids::{ConversationId, JobId};
use crate::metrics::metrics;
use crate::queue::{self, JobState, JobView, NewJob};
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Set on a submission answered with the job an earlier submission with
/// the same idempotency key created.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The `/v1/chat` routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat", observed("/v1/chat", post(submit)))
        .route(
            "/v1/chat/{job_id}",
            observed("/v1/chat/{job_id}", get(get_job).delete(cancel)),
        )
        .route(
            "/v1/chat/{job_id}/retry",
            observed("/v1/chat/{job_id}/retry", post(retry)),
        )
}

/// Body of `POST /v1/chat`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The application's user id, 1 to 256 characters.
    pub user_id: String,
    /// The user's message: not blank, at most `SKIPJACK_MAX_MESSAGE_BYTES`.
    pub message: String,
    /// A conversation of this user (see `POST /v1/conversations`); without
    /// it, the user's default conversation.
    pub conversation_id: Option<Uuid>,
    /// 1..=10, higher first; default 1.
    #[schema(minimum = 1, maximum = 10)]
    pub priority: Option<i64>,
    /// Submitting the same request again with the same key (per tenant)
    /// returns the first job. The key is bound to the request's user_id,
    /// message, conversation_id, priority and metadata: the same key with
    /// any of them different is refused with 409 `idempotency_key_reused`.
    /// Keys are kept for the history retention (30 days by default).
    pub idempotency_key: Option<String>,
    /// Free-form JSON kept with the job for auditing.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Publish the reply's text as the model writes it, for
    /// `GET /v1/chat/{job_id}/stream`; default false (the stream then
    /// carries the life-cycle events and the whole reply at the end).
    pub stream: Option<bool>,
}

/// Answer of `POST /v1/chat`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    /// The new job's id (or, for a replayed idempotency key, the first one's).
    pub job_id: Uuid,
    /// The conversation the turn belongs to.
    pub conversation_id: Option<Uuid>,
    /// `queued` for a new job; an idempotent repeat shows the first job's
    /// status now.
    pub status: String,
    /// The priority it was queued with.
    pub priority: i16,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// Query of `GET /v1/chat/{job_id}`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WaitQuery {
    /// Seconds to wait for the job to finish, 0 to 60; answers as soon as it
    /// is finished, or with its current state when the time is up. Waits
    /// are capped per API process and per tenant (429 above the cap).
    pub wait: Option<f64>,
}

/// Tokens the LLM call consumed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens sent to the model.
    pub input_tokens: i32,
    /// Tokens the model wrote.
    pub output_tokens: i32,
}

/// A chat job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResponse {
    /// The job's id.
    pub job_id: Uuid,
    /// The conversation the turn belongs to.
    pub conversation_id: Option<Uuid>,
    /// `queued`, `processing`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// 1 (lowest) to 10 (highest).
    pub priority: i16,
    /// The assistant's reply, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Why it failed (or was cancelled); while live, the last retried error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts started so far.
    pub attempts: i32,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it was first claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its final state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Tokens of the attempt that completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl From<JobView> for JobResponse {
    fn from(job: JobView) -> Self {
        let response = job
            .result
            .as_ref()
            .and_then(ChatResult::read)
            .map(|r| r.response);
        let usage = match (job.input_tokens, job.output_tokens) {
            (None, None) => None,
            (input, output) => Some(Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
            }),
        };
        JobResponse {
            job_id: job.id.0,
            conversation_id: job.conversation_id.map(|c| c.0),
            status: job.state.as_str().to_owned(),
            priority: job.priority.get(),
            response,
            error: job.error,
            attempts: job.attempts,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            usage,
        }
    }
}

/// Submits a chat turn: `202` with the job id at once; the reply comes
/// from `GET /v1/chat/{job_id}`.
#[utoipa::path(
    post, path = "/v1/chat", tag = "chat",
    request_body = ChatRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued (or the first job of this idempotency key)",
         body = SubmitResponse,
         headers(("Location" = String, description = "Where to poll the job"),
                 ("Idempotent-Replayed" = String, description = "`true` on an idempotent repeat"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "conversation_id is not this user's conversation", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`: the idempotency key was first used for a \
different request (another user_id, message, conversation_id, priority or metadata), so no job is \
created; or `conflict`: the key's first job was rolled back; retry", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is missing, mistyped or out of range", body = ErrorBody),
        (status = 429, description = "`queue_full`: the queue (global or this tenant's) is at its \
limit; nothing was stored. Refused users wait in line per API process: send the same request \
again after Retry-After, which says when this user's turn should come (it keeps its place in \
line; a user that waited longer is admitted first)", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds until this user's turn should \
come, from its place in line and the admission rate: at least SKIPJACK_RETRY_AFTER_SECONDS, at most 60"))),
        (status = 503, description = "Database unavailable, or the commit's outcome could not be \
established; retrying with the same idempotency key is safe", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<ChatRequest>,
) -> ApiResult<Response> {
    validate::user_id(&req.user_id)?;
    validate::message(&req.message, state.config.max_message_bytes)?;
    validate::idempotency_key(req.idempotency_key.as_deref())?;
    validate::metadata(req.metadata.as_ref())?;
    let priority = validate::priority(req.priority)?;
    let fingerprint = req
        .idempotency_key
        .as_ref()
        .map(|_| request_fingerprint(&req, priority));

    // Refuse at once when full, before any database work; the user's place
    // in line decides who gets a place that frees up.
    let client = state.admission.user(caller.tenant, &req.user_id);
    let ticket =
        state
            .admission
            .try_admit(caller.tenant, caller.max_queued, priority, Some(client))?;
    let resolving = tokio::time::Instant::now();
    let conversation = state
        .conversations
        .resolve(
            caller.tenant,
            &req.user_id,
            req.conversation_id.map(ConversationId),
        )
        .await?;
    metrics()
        .submit_stage
        .with_label_values(&["resolve"])
        .observe(resolving.elapsed().as_secs_f64());
    let payload = ChatPayload {
        user_id: req.user_id,
        message: req.message,
        metadata: req.metadata,
        stream: req.stream.unwrap_or(false),
    };
    let payload = serde_json::to_value(&payload)
        .map_err(|e| ApiError::Internal(format!("serialising a chat payload: {e}")))?;
    let mut job = NewJob::new(CHAT_KIND, payload)
        .with_priority(priority)
        .with_tenant(caller.tenant)
        .with_conversation(conversation)
        .with_max_attempts(state.config.max_attempts);
    if let Some(key) = req.idempotency_key {
        job = job.with_idempotency_key(key);
    }
    if let Some(fingerprint) = fingerprint {
        job = job.with_idempotency_fingerprint(fingerprint);
    }
    let submitted = state.group_commit.submit(job).await?;
    if submitted.key_reused {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this idempotency key was first used for a different request \
                      (user_id, message, conversation_id, priority or metadata differ); \
                      use a new key for a new request"
                .to_owned(),
        });
    }

    let body = if submitted.inserted {
        ticket.keep();
        SubmitResponse {
            job_id: submitted.id.0,
            conversation_id: Some(conversation.0),
            status: JobState::Queued.as_str().to_owned(),
            priority: priority.get(),
            created_at: submitted.created_at,
        }
    } else {
        drop(ticket);
        let first = queue::get(&state.pool, submitted.id, Some(caller.tenant))
            .await?
            .ok_or(ApiError::NotFound("job"))?;
        SubmitResponse {
            job_id: first.id.0,
            conversation_id: first.conversation_id.map(|c| c.0),
            status: first.state.as_str().to_owned(),
            priority: first.priority.get(),
            created_at: first.created_at,
        }
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/chat/{}", submitted.id)) {
        headers.insert(header::LOCATION, location);
    }
    if !submitted.inserted {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The fingerprint stored with an idempotency key: SHA-256 of the request's
/// canonical fields (the priority as applied, object keys of the metadata
/// sorted), so a resent request matches whatever its JSON formatting.
fn request_fingerprint(req: &ChatRequest, priority: crate::queue::Priority) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::json!([
        "chat/v1",
        req.user_id,
        req.message,
        req.conversation_id,
        priority.get(),
        req.metadata.as_ref().map(sorted),
    ]);
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

/// `value` with the keys of every object in sorted order, however the JSON
/// map keeps them.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A chat job and, once completed, its reply. With `wait`, answers as soon
/// as the job is finished or when the wait is over, whichever comes first.
#[utoipa::path(
    get, path = "/v1/chat/{job_id}", tag = "chat",
    params(("job_id" = Uuid, Path, description = "Job id"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = JobResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 422, description = "Bad job id or wait", body = ErrorBody),
        (status = 429, description = "`too_many_long_polls`: this process already holds \
`SKIPJACK_MAX_LONG_POLLS` long-polls (default 10000), or this tenant \
`SKIPJACK_MAX_TENANT_LONG_POLLS` (default 5000); poll again after Retry-After (or without `wait`)",
         body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    QueryParams(query): QueryParams<WaitQuery>,
) -> ApiResult<Json<JobResponse>> {
    let wait = match query.wait {
        None => 0.0,
        Some(w) if w.is_finite() && (0.0..=MAX_WAIT_SECONDS).contains(&w) => w,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_wait",
                format!("wait must be between 0 and {MAX_WAIT_SECONDS} seconds"),
            ))
        }
    };
    let id = JobId(id);
    let read = || async {
        queue::get(&state.pool, id, Some(caller.tenant))
            .await?
            .ok_or(ApiError::NotFound("job"))
    };
    if wait == 0.0 || state.shutdown.is_cancelled() {
        return Ok(Json(read().await?.into()));
    }
    // The wait's own first read answers a finished job at once: one read,
    // not one here and another in the wait.
    let admitted = match state.long_poll.try_admit(caller.tenant) {
        Ok(admitted) => admitted,
        // Over a cap: a finished job is still answered, only a wait is refused.
        Err(refused) => {
            let job = read().await?;
            return if job.state.is_final() {
                Ok(Json(job.into()))
            } else {
                Err(refused.into_error())
            };
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let job = state
        .long_poll
        .wait_admitted(&admitted, id, deadline, &state.shutdown)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    Ok(Json(job.into()))
}

/// Cancels a job that is queued or being processed. A running job's
/// worker stops it at once (its call to the LLM is abandoned) and stores no
/// turn for it; the conversation's next turn runs. A cancel racing the
/// job's completion: whichever commits first wins, and the answer says
/// which (200 `cancelled`, or 409 with the state it finished in).
#[utoipa::path(
    delete, path = "/v1/chat/{job_id}", tag = "chat",
    params(("job_id" = Uuid, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled; the job as it is now (status `cancelled`)",
         body = JobResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: the job is already finished \
(completed, failed or cancelled); the message names its state", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<JobResponse>> {
    let id = JobId(id);
    queue::cancel(
        &state.pool,
        id,
        Some(caller.tenant),
        "cancelled by the client",
    )
    .await?;
    let job = queue::get(&state.pool, id, Some(caller.tenant))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    Ok(Json(job.into()))
}

/// Runs a failed or cancelled job again: the same job id goes back to the
/// queue as a new attempt, with a fresh budget of attempts; its earlier
/// attempts stay in its events. It keeps its place in its conversation, so
/// it is allowed only while no later job of the conversation exists.
#[utoipa::path(
    post, path = "/v1/chat/{job_id}/retry", tag = "chat",
    params(("job_id" = Uuid, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again; the job as it is now (status `queued`)",
         body = JobResponse,
         headers(("Location" = String, description = "Where to poll the job"))),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "`not_retryable`: the job is queued, processing or \
completed (the message names its state), or has used 100 attempts; \
`conversation_moved_on`: a later job of its conversation exists (live or finished), so \
retrying this one would run an older turn after a newer one", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 429, description = "`queue_full`: the limits of `POST /v1/chat`; the job waits \
in line like a refused submission: retry after Retry-After, when its turn should come",
         body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds until this job's turn should \
come: at least SKIPJACK_RETRY_AFTER_SECONDS, at most 60"))),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let id = JobId(id);
    let before = queue::get(&state.pool, id, Some(caller.tenant))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    // A retried job is queued again: it counts against the queue limits as
    // a submission does, and waits in line as the job.
    let client = state.admission.job(caller.tenant, id);
    let ticket = state.admission.try_admit(
        caller.tenant,
        caller.max_queued,
        before.priority,
        Some(client),
    )?;
    queue::retry(&state.pool, id, Some(caller.tenant)).await?;
    ticket.keep();
    let job = queue::get(&state.pool, id, Some(caller.tenant))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let mut response = (StatusCode::ACCEPTED, Json(JobResponse::from(job))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/chat/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
