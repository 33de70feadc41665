//! `GET /v1/queue`: the depth of the queue, for clients that pace
//! themselves and for dashboards.

use super::auth::Caller;
use super::error::{ApiResult, ErrorBody};
use super::observe::observed;
use super::AppState;
use crate::queue;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/queue", observed("/v1/queue", get(stats)))
}

/// The live queue, all tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResponse {
    /// Queued jobs (ready, delayed or waiting for their conversation).
    pub total: i64,
    /// Queued jobs by priority ("1".."10"); absent priorities have none.
    pub depth: BTreeMap<String, i64>,
    /// Jobs being processed.
    pub processing: i64,
    /// Age of the oldest job ready to run now; 0 when none is.
    pub oldest_queued_age_seconds: f64,
}

/// Queue depth by priority, jobs processing and the oldest ready job's age.
#[utoipa::path(
    get, path = "/v1/queue", tag = "queue",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The queue now", body = QueueResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<QueueResponse>> {
    let stats = queue::stats(&state.pool).await?;
    Ok(Json(QueueResponse {
        total: stats.total(),
        depth: stats
            .depth
            .iter()
            .map(|(priority, n)| (priority.to_string(), *n))
            .collect(),
        processing: stats.processing,
        oldest_queued_age_seconds: stats.oldest_queued_age_seconds,
    }))
}
