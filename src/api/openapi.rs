//! `GET /openapi.json`: the OpenAPI 3 description, generated from the
//! handlers' annotations and the body types, so it cannot drift from them.

use super::chat::{ChatRequest, JobResponse, SubmitResponse, Usage};
use super::conversations::{
    ConversationResponse, MessageOut, MessagesResponse, NewConversationRequest,
};
use super::error::{ErrorBody, ErrorDetail};
use super::observe::observed;
use super::queue_status::{QueueResponse, QueueScope};
use super::webhooks::{CreatedWebhookResponse, NewWebhookRequest, WebhookList, WebhookResponse};
use super::AppState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "skipjack",
        description = "Chat turns in, replies out: a Postgres-native job queue for LLM chat agents. \
Every /v1 route needs `Authorization: Bearer KEY`; a tenant sees only its own jobs and \
conversations. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        super::chat::submit,
        super::chat::get_job,
        super::chat::cancel,
        super::stream::stream,
        super::chat::retry,
        super::conversations::create,
        super::conversations::messages,
        super::queue_status::stats,
        super::webhooks::create,
        super::webhooks::list,
        super::webhooks::remove,
        super::admin::overview,
        super::admin::jobs,
        super::admin::job,
        super::admin::conversation,
        super::admin::retry,
        super::admin::cancel,
        health,
        ready,
        metrics,
        openapi_json,
    ),
    components(schemas(
        ChatRequest,
        SubmitResponse,
        JobResponse,
        Usage,
        NewConversationRequest,
        ConversationResponse,
        MessagesResponse,
        MessageOut,
        crate::llm::Role,
        QueueResponse,
        QueueScope,
        NewWebhookRequest,
        WebhookResponse,
        CreatedWebhookResponse,
        WebhookList,
        super::admin::Overview,
        super::admin::TenantQueue,
        super::admin::MinuteCounts,
        super::admin::AdminWorker,
        super::admin::AdminBudget,
        super::admin::BudgetUse,
        super::admin::AdminJob,
        super::admin::AdminJobPage,
        super::admin::AdminJobDetail,
        super::admin::AdminEvent,
        super::admin::AdminConversation,
        super::admin::AdminTurn,
        ErrorBody,
        ErrorDetail,
        Status,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "chat", description = "Submit, poll and cancel chat turns"),
        (name = "conversations", description = "Conversations and their messages"),
        (name = "webhooks", description = "Endpoints told when the tenant's jobs finish (signed POSTs)"),
        (name = "queue", description = "The caller's queue depth (the whole queue for the admin key)"),
        (name = "admin", description = "The operator console's reads and actions, every tenant's jobs: \
the admin key (SKIPJACK_ADMIN_KEY) only; 404 `disabled` when it is not set"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the /v1 routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_…")
                    .build(),
            ),
        );
    }
}

/// Body of `/health` and `/ready`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// Why the process is not ready.
    pub reason: Option<String>,
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the generated OpenAPI document serialises")
});

/// Serves `/openapi.json`.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", observed("/openapi.json", get(serve)))
}

async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

// The operations routes are served by `crate::health` (shared with the
// worker); these bodiless functions only describe them.

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Status)))]
#[allow(dead_code)]
fn health() {}

/// Readiness: the database answers and its schema is the one this build
/// expects.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Database unreachable or schema not current", body = Status),
    ))]
#[allow(dead_code)]
fn ready() {}

/// Prometheus metrics in the text exposition format. With
/// `SKIPJACK_METRICS_ADDR` set they are served on that address only, and
/// this port answers 404 here.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
        (status = 404, description = "Served on SKIPJACK_METRICS_ADDR instead", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}
