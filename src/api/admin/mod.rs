//! `/v1/admin`: the operator console's reads and actions as JSON, for the
//! admin key only ([`auth::Admin`]); a tenant's key gets
//! 401. Every tenant's jobs are visible here.
//!
//! - `GET /v1/admin/overview`: the queue by priority and tenant, workers,
//!   throughput over the last hour.
//! - `GET /v1/admin/jobs?state=&tenant=&priority=&kind=&conversation=&since=&until=&error=&cursor=&limit=`:
//!   newest first, keyset-paginated by `cursor` (the previous page's
//!   `next_cursor`).
//! - `GET /v1/admin/jobs/{id}`, `GET /v1/admin/conversations/{id}`.
//! - `POST /v1/admin/jobs/{id}/retry`, `POST /v1/admin/jobs/{id}/cancel`:
//!   the queue's retry and cancel, as `POST /v1/chat/{id}/retry` and
//!   `DELETE /v1/chat/{id}` run them for a tenant, and as `skipjack jobs`
//!   runs them (an operator's retry is not held to the queue limits).

pub mod auth;
pub mod query;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{IdPath, QueryParams};
use super::observe::observed;
use super::AppState;
use crate::ids::{ConversationId, JobId, TenantId};
use crate::queue::{self, JobEvent, JobState, JobView, Priority};
use crate::tenants;
use auth::Admin;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use query::{JobQuery, DEFAULT_LIMIT, MAX_ERROR_FILTER_LEN, MAX_KIND_LEN, MAX_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Longest `since`/`until` text.
const MAX_TIME_LEN: usize = 64;

/// The `/v1/admin` routes (admin key only).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/overview",
            observed("/v1/admin/overview", get(overview)),
        )
        .route("/v1/admin/jobs", observed("/v1/admin/jobs", get(jobs)))
        .route(
            "/v1/admin/jobs/{job_id}",
            observed("/v1/admin/jobs/{job_id}", get(job)),
        )
        .route(
            "/v1/admin/jobs/{job_id}/retry",
            observed("/v1/admin/jobs/{job_id}/retry", post(retry)),
        )
        .route(
            "/v1/admin/jobs/{job_id}/cancel",
            observed("/v1/admin/jobs/{job_id}/cancel", post(cancel)),
        )
        .route(
            "/v1/admin/conversations/{conversation_id}",
            observed(
                "/v1/admin/conversations/{conversation_id}",
                get(conversation),
            ),
        )
}

/// Query of `GET /v1/admin/jobs`. Every filter is optional; bad values get
/// 422 naming the parameter.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// `queued`, `processing`, `completed`, `failed` or `cancelled`.
    pub state: Option<String>,
    /// Tenant id or name.
    pub tenant: Option<String>,
    /// 1..=10.
    pub priority: Option<String>,
    /// Job kind, e.g. `chat` (at most 100 characters).
    pub kind: Option<String>,
    /// Conversation id.
    pub conversation: Option<String>,
    /// Submitted at or after: RFC 3339 (`2025-01-01T12:00:00Z`) or a time
    /// ago (`90s`, `30m`, `2h`, `7d`).
    pub since: Option<String>,
    /// Submitted before; same forms as `since`.
    pub until: Option<String>,
    /// Text the job's error contains, case-insensitive (at most 200
    /// characters).
    pub error: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Jobs per page, 1..=200; default 50.
    pub limit: Option<String>,
}

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::invalid(code, message)
}

/// `text` as a time: RFC 3339, or a duration meaning that long ago.
fn parse_time(name: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    if text.len() > MAX_TIME_LEN {
        return Err(bad("invalid_time", format!("{name} is too long")));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    crate::operator::parse_duration(text)
        .map(crate::operator::since)
        .map_err(|_| {
            bad(
                "invalid_time",
                format!("{name} must be an RFC 3339 time (2025-01-01T12:00:00Z) or a time ago (30m, 2h, 7d)"),
            )
        })
}

fn parse_state(text: &str) -> ApiResult<JobState> {
    Ok(match text {
        "queued" => JobState::Queued,
        "processing" => JobState::Processing,
        "completed" => JobState::Completed,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        _ => {
            return Err(bad(
                "invalid_state",
                "state must be queued, processing, completed, failed or cancelled".to_owned(),
            ))
        }
    })
}

impl JobsQuery {
    /// The query the filters describe, or a 422 naming the bad one.
    pub async fn resolve(&self, pool: &sqlx::PgPool) -> ApiResult<JobQuery> {
        let state = present(&self.state).map(parse_state).transpose()?;
        let tenant = match present(&self.tenant) {
            None => None,
            Some(t) if t.len() > 256 => {
                return Err(bad("invalid_tenant", "tenant is too long".into()))
            }
            Some(t) => match Uuid::parse_str(t) {
                Ok(id) => Some(TenantId(id)),
                Err(_) => match tenants::find_tenant(pool, t).await {
                    Ok(found) => Some(found.id),
                    Err(tenants::TenantError::TenantNotFound(_)) => {
                        return Err(bad("invalid_tenant", "no tenant has this name".into()))
                    }
                    Err(tenants::TenantError::Database(e)) => return Err(e.into()),
                    Err(e) => return Err(ApiError::Internal(e.to_string())),
                },
            },
        };
        let priority = match present(&self.priority) {
            None => None,
            Some(p) => match p.parse::<i64>().ok().and_then(|p| Priority::new(p).ok()) {
                Some(p) => Some(p),
                None => {
                    return Err(bad(
                        "invalid_priority",
                        "priority must be an integer from 1 to 10".into(),
                    ))
                }
            },
        };
        let kind = present(&self.kind).map(str::to_owned);
        if kind
            .as_ref()
            .is_some_and(|k| k.chars().count() > MAX_KIND_LEN)
        {
            return Err(bad(
                "invalid_kind",
                format!("kind is at most {MAX_KIND_LEN} characters"),
            ));
        }
        let uuid =
            |name: &str, code: &'static str, v: &Option<String>| -> ApiResult<Option<Uuid>> {
                present(v)
                    .map(|t| {
                        Uuid::parse_str(t).map_err(|_| bad(code, format!("{name} must be a UUID")))
                    })
                    .transpose()
            };
        let conversation =
            uuid("conversation", "invalid_conversation", &self.conversation)?.map(ConversationId);
        let cursor = uuid("cursor", "invalid_cursor", &self.cursor)?.map(JobId);
        let since = present(&self.since)
            .map(|t| parse_time("since", t))
            .transpose()?;
        let until = present(&self.until)
            .map(|t| parse_time("until", t))
            .transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err(bad("invalid_time", "since must be before until".into()));
            }
        }
        let error = present(&self.error).map(str::to_owned);
        if error
            .as_ref()
            .is_some_and(|e| e.chars().count() > MAX_ERROR_FILTER_LEN || e.contains('\0'))
        {
            return Err(bad(
                "invalid_error",
                format!("error is at most {MAX_ERROR_FILTER_LEN} characters, without NUL"),
            ));
        }
        let limit = match present(&self.limit) {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<i64>() {
                Ok(l) if (1..=MAX_LIMIT).contains(&l) => l,
                _ => {
                    return Err(bad(
                        "invalid_limit",
                        format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };
        Ok(JobQuery {
            state,
            tenant,
            priority,
            kind,
            conversation,
            since,
            until,
            error,
            cursor,
            limit,
        })
    }
}

/// A job of any tenant, live or finished.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminJob {
    /// The job's id.
    pub id: Uuid,
    /// Its tenant; absent for jobs of no tenant.
    pub tenant_id: Option<Uuid>,
    /// Its conversation, for chat turns.
    pub conversation_id: Option<Uuid>,
    /// Which handler runs it (`chat`, `webhook`, …).
    pub kind: String,
    /// 1 (lowest) to 10 (highest).
    pub priority: i16,
    /// `queued`, `processing`, `completed`, `failed` or `cancelled`.
    pub state: String,
    /// What the handler was given.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Attempts started.
    pub attempts: i32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: i32,
    /// What a completed job returned.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The final error, or while live the last retried one.
    pub error: Option<String>,
    /// The lease owner now, or of the last attempt.
    pub worker: Option<String>,
    /// Input tokens of the attempt that completed.
    pub input_tokens: Option<i32>,
    /// Output tokens of the attempt that completed.
    pub output_tokens: Option<i32>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// When it was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a queued job may run next.
    pub run_at: Option<DateTime<Utc>>,
}

impl From<JobView> for AdminJob {
    fn from(j: JobView) -> Self {
        AdminJob {
            id: j.id.0,
            tenant_id: j.tenant_id.map(|t| t.0),
            conversation_id: j.conversation_id.map(|c| c.0),
            kind: j.kind,
            priority: j.priority.get(),
            state: j.state.as_str().to_owned(),
            payload: j.payload,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            result: j.result,
            error: j.error,
            worker: j.worker,
            input_tokens: j.input_tokens,
            output_tokens: j.output_tokens,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            run_at: j.run_at,
        }
    }
}

/// One page of `GET /v1/admin/jobs`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminJobPage {
    /// Newest first (by submission).
    pub jobs: Vec<AdminJob>,
    /// Pass as `cursor` for the next page; absent on the last page. A page
    /// may hold fewer than `limit` jobs, even none, and still have one:
    /// each page scans a bounded number of jobs (5,000 live and 5,000
    /// finished), so filters that match few jobs are searched page by page.
    pub next_cursor: Option<Uuid>,
    /// Present when the page holds fewer than `limit` jobs but is not the
    /// last: every job submitted since this time has been searched.
    pub searched_to: Option<DateTime<Utc>>,
}

/// An exceptional transition of a job: a retried, rescued, released or
/// cancelled attempt.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminEvent {
    /// `retried`, `rescued`, `released` or `cancelled`.
    pub event: String,
    /// The attempt the event ended.
    pub attempt: i32,
    /// The error the attempt ended with.
    pub error: Option<String>,
    /// When the job may run again (retries and rescues).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The worker that held the attempt (`manual` for a retry by hand).
    pub worker: Option<String>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

impl From<JobEvent> for AdminEvent {
    fn from(e: JobEvent) -> Self {
        AdminEvent {
            event: e.event,
            attempt: e.attempt,
            error: e.error,
            next_run_at: e.next_run_at,
            worker: e.worker,
            created_at: e.created_at,
        }
    }
}

/// A job with its events.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminJobDetail {
    /// The job as it is now.
    pub job: AdminJob,
    /// Oldest first.
    pub events: Vec<AdminEvent>,
}

/// One message of a conversation.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminTurn {
    /// Position in the conversation, from 1.
    pub seq: i32,
    /// Who wrote it.
    pub role: crate::llm::Role,
    /// The text.
    pub content: String,
    /// The job whose completion appended it.
    pub job_id: Option<Uuid>,
    /// Tokens the provider reported for it.
    pub tokens: Option<i32>,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// A conversation with its turns and jobs.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminConversation {
    /// The conversation's id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The application's user it belongs to.
    pub user_id: String,
    /// True for the user's default conversation.
    pub is_default: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// In order (at most 1000).
    pub turns: Vec<AdminTurn>,
    /// In submission order (at most 1000).
    pub jobs: Vec<AdminJob>,
}

/// A tenant's share of the live queue.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TenantQueue {
    /// The tenant's id.
    pub tenant_id: Uuid,
    /// The tenant's name.
    pub name: String,
    /// Its queued jobs.
    pub queued: i64,
    /// Its jobs being processed.
    pub processing: i64,
    /// Age of its oldest job ready to run; 0 when none is.
    pub oldest_queued_age_seconds: f64,
}

/// Jobs finished in one minute.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MinuteCounts {
    /// The minute's start (UTC).
    pub minute: DateTime<Utc>,
    /// Jobs completed in it.
    pub completed: i64,
    /// Jobs failed in it.
    pub failed: i64,
    /// Jobs cancelled in it.
    pub cancelled: i64,
}

/// A worker alive.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminWorker {
    /// The worker's id.
    pub worker: String,
    /// Jobs it is processing.
    pub in_flight: i64,
    /// The soonest expiry of its leases.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it last registered as waiting for work (idle slots).
    pub waiting_since: Option<DateTime<Utc>>,
}

/// One unit (requests or tokens) of a provider budget.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BudgetUse {
    /// The limit per minute.
    pub limit_per_minute: i64,
    /// Units that may go at once after a quiet spell.
    pub burst: i64,
    /// Units of the burst spent now (0..=burst): what cannot go at once.
    pub in_use: f64,
}

/// A provider budget shared by the workers (per endpoint and model).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AdminBudget {
    /// The endpoint's URL without credentials, and its position.
    pub endpoint: String,
    /// The model the budget is for.
    pub model: String,
    /// Absent when no limit is set, or when the workers have not recorded
    /// their limits (they do from schema 13).
    pub requests: Option<BudgetUse>,
    /// Tokens per minute; absent when unlimited or not recorded.
    pub tokens: Option<BudgetUse>,
    /// Last reservation (or creation).
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/admin/overview`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Queued jobs (ready, delayed or waiting for their conversation).
    pub queued: i64,
    /// Queued jobs by priority ("1".."10").
    pub depth: BTreeMap<String, i64>,
    /// Jobs being processed.
    pub processing: i64,
    /// Age of the oldest job ready to run now; 0 when none is.
    pub oldest_queued_age_seconds: f64,
    /// Tenants with live jobs, most queued first.
    pub tenants: Vec<TenantQueue>,
    /// The last 60 minutes, oldest first.
    pub throughput: Vec<MinuteCounts>,
    /// Workers alive, with their jobs in flight.
    pub workers: Vec<AdminWorker>,
    /// Provider budgets (`SKIPJACK_LLM_RPM`/`SKIPJACK_LLM_TPM`), when any
    /// worker has one.
    pub budgets: Vec<AdminBudget>,
    /// When the queue numbers were read (refreshed about every second).
    pub as_of: DateTime<Utc>,
}

/// The overview, from the queue snapshot and three small queries.
pub async fn read_overview(state: &AppState) -> ApiResult<Overview> {
    let snapshot = state.queue.snapshot().await?;
    let names: HashMap<TenantId, String> = query::tenant_names(&state.pool)
        .await?
        .into_iter()
        .collect();
    let mut tenants: Vec<TenantQueue> = snapshot
        .tenants
        .iter()
        .map(|(id, s)| TenantQueue {
            tenant_id: id.0,
            name: names.get(id).cloned().unwrap_or_default(),
            queued: s.depth.values().sum(),
            processing: s.processing,
            oldest_queued_age_seconds: s.oldest_queued_age_seconds,
        })
        .collect();
    tenants.sort_by(|a, b| b.queued.cmp(&a.queued).then(a.name.cmp(&b.name)));
    let throughput = query::throughput(&state.pool)
        .await?
        .into_iter()
        .map(|m| MinuteCounts {
            minute: m.minute,
            completed: m.completed,
            failed: m.failed,
            cancelled: m.cancelled,
        })
        .collect();
    let workers = query::workers(&state.pool)
        .await?
        .into_iter()
        .map(|w| AdminWorker {
            worker: w.worker,
            in_flight: w.in_flight,
            lease_expires_at: w.lease_expires_at,
            waiting_since: w.waiting_since,
        })
        .collect();
    let budgets = if state
        .config
        .schema
        .has(crate::llm::budget::BUDGET_SCHEMA_VERSION)
    {
        query::budgets(&state.pool).await?
    } else {
        Vec::new()
    };
    let budgets = budgets
        .into_iter()
        .map(|b| {
            let unit = |limit: Option<i64>, burst: Option<i64>, ahead: f64| {
                Some(BudgetUse {
                    limit_per_minute: limit?,
                    burst: burst?,
                    in_use: query::budget_in_use(limit, burst, ahead)?,
                })
            };
            AdminBudget {
                requests: unit(b.rpm, b.request_burst, b.requests_ahead_s),
                tokens: unit(b.tpm, b.token_burst, b.tokens_ahead_s),
                endpoint: b.endpoint,
                model: b.model,
                updated_at: b.updated_at,
            }
        })
        .collect();
    Ok(Overview {
        queued: snapshot.all.depth.values().sum(),
        depth: snapshot
            .all
            .depth
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect(),
        processing: snapshot.all.processing,
        oldest_queued_age_seconds: snapshot.all.oldest_queued_age_seconds,
        tenants,
        throughput,
        workers,
        budgets,
        as_of: snapshot.as_of,
    })
}

/// A page of jobs for `q`.
pub async fn read_jobs(state: &AppState, q: &JobsQuery) -> ApiResult<AdminJobPage> {
    let query = q.resolve(&state.pool).await?;
    let page = query::list_jobs(&state.pool, &query).await.map_err(|e| {
        // 57014: query_canceled, here by the list's statement_timeout.
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                ApiError::Unavailable(
                    "the jobs list took over 5 s: the database is overloaded or a jobs table is \
                     locked; try again",
                )
            }
            _ => ApiError::from(e),
        }
    })?;
    Ok(AdminJobPage {
        jobs: page.jobs.into_iter().map(AdminJob::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.0),
        searched_to: page.searched_to,
    })
}

/// A job with its events, or 404.
pub async fn read_job(state: &AppState, id: JobId) -> ApiResult<AdminJobDetail> {
    let detail = query::job(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    Ok(AdminJobDetail {
        job: detail.job.into(),
        events: detail.events.into_iter().map(AdminEvent::from).collect(),
    })
}

/// A conversation, or 404.
pub async fn read_conversation(
    state: &AppState,
    id: ConversationId,
) -> ApiResult<AdminConversation> {
    let c = query::conversation(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    Ok(AdminConversation {
        id: c.conversation.id.0,
        tenant_id: c.conversation.tenant_id.0,
        user_id: c.conversation.user_id,
        is_default: c.conversation.is_default,
        created_at: c.conversation.created_at,
        turns: c
            .turns
            .into_iter()
            .map(|t| AdminTurn {
                seq: t.seq,
                role: t.role,
                content: t.content,
                job_id: t.job_id.map(|j| j.0),
                tokens: t.tokens,
                created_at: t.created_at,
            })
            .collect(),
        jobs: c.jobs.into_iter().map(AdminJob::from).collect(),
    })
}

/// Retries a failed or cancelled job of any tenant (the queue's retry).
pub async fn retry_job(state: &AppState, id: JobId) -> ApiResult<AdminJob> {
    queue::retry(&state.pool, id, None).await?;
    tracing::info!(job_id = %id, "job retried by an operator");
    Ok(read_job(state, id).await?.job)
}

/// Cancels a queued or running job of any tenant (the queue's cancel; the
/// worker running it is told at once).
pub async fn cancel_job(state: &AppState, id: JobId) -> ApiResult<AdminJob> {
    queue::cancel(&state.pool, id, None, "cancelled by an operator").await?;
    tracing::info!(job_id = %id, "job cancelled by an operator");
    Ok(read_job(state, id).await?.job)
}

/// The whole queue at a glance: depth by priority and tenant, jobs being
/// processed, the oldest ready job's age, jobs finished per minute over the
/// last hour, the workers alive with their jobs in flight.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 401, description = "Not the admin key (tenants' keys included)", body = ErrorBody),
        (status = 404, description = "`disabled`: SKIPJACK_ADMIN_KEY is not set", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn overview(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Overview>> {
    Ok(Json(read_overview(&state).await?))
}

/// Jobs of every tenant, live and finished, newest first (by submission),
/// filtered; keyset pagination: pass `next_cursor` as `cursor` for the next
/// page, which jobs submitted meanwhile never shift. Every page scans a
/// bounded number of jobs, so a page may be short (even empty) and still
/// have a `next_cursor`: follow it until it is absent.
#[utoipa::path(get, path = "/v1/admin/jobs", tag = "admin",
    params(JobsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = AdminJobPage),
        (status = 401, description = "Not the admin key (tenants' keys included)", body = ErrorBody),
        (status = 404, description = "`disabled`: SKIPJACK_ADMIN_KEY is not set", body = ErrorBody),
        (status = 422, description = "A filter is invalid (`invalid_state`, `invalid_tenant`, \
`invalid_priority`, `invalid_kind`, `invalid_conversation`, `invalid_time`, `invalid_error`, \
`invalid_cursor`, `invalid_limit`); the message says which and why", body = ErrorBody),
        (status = 503, description = "Database unavailable, or the list took over 5 s (an \
overloaded database or a locked table)", body = ErrorBody),
    ))]
pub async fn jobs(
    State(state): State<AppState>,
    _: Admin,
    QueryParams(q): QueryParams<JobsQuery>,
) -> ApiResult<Json<AdminJobPage>> {
    Ok(Json(read_jobs(&state, &q).await?))
}

/// One job of any tenant with its events.
#[utoipa::path(get, path = "/v1/admin/jobs/{job_id}", tag = "admin",
    params(("job_id" = Uuid, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = AdminJobDetail),
        (status = 401, description = "Not the admin key", body = ErrorBody),
        (status = 404, description = "No such job, or `disabled`", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn job(
    State(state): State<AppState>,
    _: Admin,
    IdPath(id): IdPath,
) -> ApiResult<Json<AdminJobDetail>> {
    Ok(Json(read_job(&state, JobId(id)).await?))
}

/// One conversation of any tenant: its turns in order and its jobs.
#[utoipa::path(get, path = "/v1/admin/conversations/{conversation_id}", tag = "admin",
    params(("conversation_id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation", body = AdminConversation),
        (status = 401, description = "Not the admin key", body = ErrorBody),
        (status = 404, description = "No such conversation, or `disabled`", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn conversation(
    State(state): State<AppState>,
    _: Admin,
    IdPath(id): IdPath,
) -> ApiResult<Json<AdminConversation>> {
    Ok(Json(read_conversation(&state, ConversationId(id)).await?))
}

/// Runs a failed or cancelled job again under the same id (as
/// `POST /v1/chat/{id}/retry`, for any tenant, not held to the queue
/// limits).
#[utoipa::path(post, path = "/v1/admin/jobs/{job_id}/retry", tag = "admin",
    params(("job_id" = Uuid, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again; the job as it is now", body = AdminJob),
        (status = 401, description = "Not the admin key", body = ErrorBody),
        (status = 404, description = "No such job, or `disabled`", body = ErrorBody),
        (status = 409, description = "`not_retryable` (queued, processing or completed, or 100 \
attempts used) or `conversation_moved_on`", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    _: Admin,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<AdminJob>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(retry_job(&state, JobId(id)).await?),
    ))
}

/// Cancels a queued or running job (as `DELETE /v1/chat/{id}`, for any
/// tenant).
#[utoipa::path(post, path = "/v1/admin/jobs/{job_id}/cancel", tag = "admin",
    params(("job_id" = Uuid, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled; the job as it is now", body = AdminJob),
        (status = 401, description = "Not the admin key", body = ErrorBody),
        (status = 404, description = "No such job, or `disabled`", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: already finished", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    _: Admin,
    IdPath(id): IdPath,
) -> ApiResult<Json<AdminJob>> {
    Ok(Json(cancel_job(&state, JobId(id)).await?))
}
