//! The health and metrics endpoints every process serves.
//!
//! `/health`: the process is alive (liveness). `/ready`: the database
//! answers and its schema is the one this build expects, and any extra
//! [`ReadyCheck`] the process adds (a worker: it is claiming) passes
//! (readiness). `/metrics`: Prometheus text.

use crate::{db, metrics};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// How long `/ready` waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness condition beyond the database: `Ok`, or why not ready.
/// `name` becomes a boolean field of the `/ready` answer.
#[derive(Clone)]
pub struct ReadyCheck {
    name: &'static str,
    check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl ReadyCheck {
    pub fn new(
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        ReadyCheck {
            name,
            check: Arc::new(check),
        }
    }
}

#[derive(Clone)]
struct ReadyState {
    pool: PgPool,
    check: Option<ReadyCheck>,
}

pub fn router(pool: PgPool) -> Router {
    router_with_check(pool, None)
}

/// [`router`] whose `/ready` also requires `check`.
pub fn router_with_check(pool: PgPool, check: Option<ReadyCheck>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(ReadyState { pool, check })
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<ReadyState>) -> impl IntoResponse {
    match tokio::time::timeout(READY_TIMEOUT, db::check_schema(&state.pool)).await {
        Ok(Ok(())) => match &state.check {
            None => (StatusCode::OK, Json(json!({"status": "ready"}))),
            Some(check) => match (check.check)() {
                Ok(()) => (
                    StatusCode::OK,
                    Json(json!({"status": "ready", check.name: true})),
                ),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "unavailable", "reason": reason, check.name: false})),
                ),
            },
        },
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": error.to_string()})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "database did not answer in time"})),
        ),
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}
