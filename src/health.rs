//! The health and metrics endpoints every process serves.
//!
//! `/health`: the process is alive (liveness). `/ready`: the database
//! answers and its schema is one the process can run on, and any extra
//! [`ReadyCheck`] the process adds (a worker: it is claiming) passes
//! (readiness). `/metrics`: Prometheus text.
//!
//! The schema part is [`db::check_schema_at`] against the schema the
//! process started with: it stays true while migrations that declare
//! themselves compatible land (docs/upgrades.md), so a rolling upgrade does
//! not take the old processes out of service. Its answer is kept for
//! [`SCHEMA_REFRESH`]: probes from every replica every few seconds cost the
//! database one query per process per interval, and a probe never waits on
//! a slow catalog read while a migration runs.

use crate::db::{self, Schema};
use crate::metrics;
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

/// How long a schema check's answer is reused by `/ready`.
pub const SCHEMA_REFRESH: Duration = Duration::from_secs(5);

/// A readiness condition beyond the database: `Ok`, or why not ready.
/// `name` becomes a boolean field of the `/ready` answer.
#[derive(Clone)]
pub struct ReadyCheck {
    name: &'static str,
    check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl ReadyCheck {
    /// A readiness check named `name`: `check` says what is wrong, if anything.
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

/// The schema check of `/ready`, answered from a cache refreshed at most
/// every `refresh`.
pub struct SchemaWatch {
    pool: PgPool,
    schema: Schema,
    refresh: Duration,
    /// The last answer and when it was taken. The lock is held while a
    /// check runs, so concurrent probes share one query.
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
}

impl SchemaWatch {
    /// Checks `pool` against `schema` (what [`db::check_schema`] returned
    /// at start-up), refreshing every [`SCHEMA_REFRESH`].
    pub fn new(pool: PgPool, schema: Schema) -> Arc<SchemaWatch> {
        Self::with_refresh(pool, schema, SCHEMA_REFRESH)
    }

    /// [`SchemaWatch::new`] with another refresh interval.
    pub fn with_refresh(pool: PgPool, schema: Schema, refresh: Duration) -> Arc<SchemaWatch> {
        Arc::new(SchemaWatch {
            pool,
            schema,
            refresh,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The schema the process runs at.
    pub fn schema(&self) -> Schema {
        self.schema
    }

    /// `Ok`, or why the process cannot serve on this database now.
    pub async fn status(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < self.refresh {
                return answer.clone();
            }
        }
        let answer =
            match tokio::time::timeout(READY_TIMEOUT, db::check_schema_at(&self.pool, self.schema))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("database did not answer in time".to_owned()),
            };
        *last = Some((tokio::time::Instant::now(), answer.clone()));
        answer
    }
}

#[derive(Clone)]
struct ReadyState {
    schema: Arc<SchemaWatch>,
    check: Option<ReadyCheck>,
}

/// The endpoints of a process running at the newest schema this build
/// knows (tests, tools).
pub fn router(pool: PgPool) -> Router {
    router_with_check(pool, None)
}

/// [`router`] whose `/ready` also requires `check`.
pub fn router_with_check(pool: PgPool, check: Option<ReadyCheck>) -> Router {
    router_for(SchemaWatch::new(pool, Schema::current()), check)
}

/// The endpoints of a process whose schema `schema` watches; `/ready` also
/// requires `check` when given.
pub fn router_for(schema: Arc<SchemaWatch>, check: Option<ReadyCheck>) -> Router {
    probes_router(schema, check).merge(metrics_router())
}

/// `/health` and `/ready` alone (when `/metrics` is served elsewhere).
pub fn probes_router(schema: Arc<SchemaWatch>, check: Option<ReadyCheck>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(ReadyState { schema, check })
}

/// `/metrics` alone, for a separate, non-public address.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(render_metrics))
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `{"status": "ready", "schema_version": N}` (200), or `{"status":
/// "unavailable", "reason": ..., "schema_version": N}` (503); a process's
/// extra check adds its boolean field.
async fn ready(State(state): State<ReadyState>) -> impl IntoResponse {
    let version = state.schema.schema().version();
    match state.schema.status().await {
        Ok(()) => match &state.check {
            None => (
                StatusCode::OK,
                Json(json!({"status": "ready", "schema_version": version})),
            ),
            Some(check) => match (check.check)() {
                Ok(()) => (
                    StatusCode::OK,
                    Json(json!({"status": "ready", "schema_version": version, check.name: true})),
                ),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "status": "unavailable", "reason": reason,
                        "schema_version": version, check.name: false
                    })),
                ),
            },
        },
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason, "schema_version": version})),
        ),
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}
