//! The health and metrics endpoints every process serves.
//!
//! `/health`: the process is alive (liveness). `/ready`: the database
//! answers and its schema is the one this build expects (readiness).
//! `/metrics`: Prometheus text.

use crate::{db, metrics};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

/// How long `/ready` waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(pool)
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn ready(State(pool): State<PgPool>) -> impl IntoResponse {
    match tokio::time::timeout(READY_TIMEOUT, db::check_schema(&pool)).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
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
