//! The REST API: chat turns in, replies out.
//!
//! # Routes
//! - `POST /v1/chat` ([`chat`]): validate, admit ([`admission`]), pick the
//!   conversation ([`crate::chat::resolver::Resolver`]), enqueue through
//!   [`group_commit`]; `202` with the job id and a `Location`.
//! - `GET /v1/chat/{job_id}?wait=N`: the job, long-polled through
//!   [`long_poll`] (one LISTEN connection per process).
//! - `DELETE /v1/chat/{job_id}`: cancel a queued or running job (the
//!   worker running it is told at once).
//! - `POST /v1/chat/{job_id}/retry`: a failed or cancelled job back in the
//!   queue under the same id, while its conversation has no later job.
//! - `POST /v1/conversations`, `GET /v1/conversations/{id}/messages`.
//! - `POST /v1/webhooks`, `GET /v1/webhooks`, `DELETE /v1/webhooks/{id}`
//!   ([`webhooks`]): endpoints told when the tenant's jobs finish.
//! - `GET /v1/queue` ([`queue_status`]): the caller's queue (the whole queue for
//!   the admin key), from a snapshot refreshed every second.
//! - `/v1/admin/…` ([`admin`]) and `/console` ([`console`]): the
//!   operator console and its JSON, for the admin key only.
//! - `GET /health`, `/ready`, `/metrics` ([`crate::health`]) and
//!   `GET /openapi.json` ([`openapi`]). With `SKIPJACK_METRICS_ADDR` set,
//!   `/metrics` is served on that address only ([`serve_metrics`]): the
//!   metrics describe every tenant's traffic and the whole queue, which a
//!   public port should not show.
//!
//! Every `/v1` route authenticates a bearer key ([`auth`]); a tenant sees
//! only its own jobs and conversations, and another tenant's id is a 404
//! exactly like a missing one. Errors are mapped to statuses in one place
//! ([`error`]); bad input is a 4xx, never a 500 ([`extract`], [`validate`]).
//!
//! # Status codes for bad input
//! Malformed JSON → 400; a body over `SKIPJACK_MAX_BODY_BYTES` → 413;
//! well-formed JSON with missing or mistyped fields, values out of range,
//! ids in paths that are not UUIDs, `wait` outside 0..=60 → 422.
//!
//! # Shutdown
//! [`Api::serve`] stops accepting on `shutdown`, lets in-flight requests
//! finish within `shutdown_grace`, and long-polls answer at once with the
//! job's current state; then the background tasks stop and the process
//! unregisters as a waiter.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod chat;
pub mod config;
pub mod console;
pub mod conversations;
pub mod error;
pub mod extract;
pub mod group_commit;
pub mod long_poll;
pub mod observe;
pub mod openapi;
pub mod queue_status;
pub mod stream;
pub mod validate;
pub mod webhooks;

pub use config::{ApiArgs, ApiConfig, MAX_WAIT_SECONDS};
pub use error::ApiError;

use crate::health;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use axum::Router;
use group_commit::{GroupCommit, GroupCommitConfig};
use long_poll::LongPoll;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The process's settings.
    pub config: Arc<ApiConfig>,
    /// API keys to tenants, cached.
    pub auth: Arc<auth::Authenticator>,
    /// Resolves the conversation a submission goes to.
    pub conversations: Arc<crate::chat::resolver::Resolver>,
    /// Backpressure: who may submit while the queue is full.
    pub admission: Arc<admission::Admission>,
    /// Batches submissions into shared transactions.
    pub group_commit: Arc<GroupCommit>,
    /// Waits for jobs to finish (`?wait=`).
    pub long_poll: Arc<LongPoll>,
    /// The queue snapshot behind `GET /v1/queue`.
    pub queue: Arc<queue_status::QueueView>,
    /// Reads streamed pieces for the event streams this process serves.
    pub stream_hub: Arc<crate::stream::Hub>,
    /// Cancelled at shutdown: long-polls answer at once.
    pub shutdown: CancellationToken,
}

/// A running API: its state and background tasks (group commit, LISTEN,
/// admission refresh), ready to serve.
pub struct Api {
    state: AppState,
    /// Stops the background tasks (after the server has drained).
    background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Api {
    /// Starts the background tasks. `shutdown` is the signal to drain (see
    /// [`Api::serve`]).
    pub fn start(pool: PgPool, config: ApiConfig, shutdown: CancellationToken) -> Api {
        Self::start_with_direct(pool.clone(), pool, config, shutdown)
    }

    /// [`Api::start`] with a second pool, `direct`, for the LISTEN
    /// connection and the gauges' leadership lock: session state that
    /// PgBouncer in transaction mode would break (see
    /// `db::connect_direct`).
    pub fn start_with_direct(
        pool: PgPool,
        direct: PgPool,
        config: ApiConfig,
        shutdown: CancellationToken,
    ) -> Api {
        let background = CancellationToken::new();
        let (group_commit, gatherer) = GroupCommit::spawn(
            pool.clone(),
            GroupCommitConfig {
                window: config.group_commit_window,
                max_batch: config.group_commit_max_batch,
                flushes: config.group_commit_flushes,
            },
            background.clone(),
        );
        let admission = Arc::new(admission::Admission::new(
            config.max_queue_depth,
            config.max_tenant_queue_depth,
            config.retry_after_secs,
            config.fair_admission,
        ));
        let long_poll =
            LongPoll::with_listener_pool(pool.clone(), direct.clone(), config.long_poll.clone());
        let mut tasks = vec![gatherer];
        tasks.push(admission::spawn_refresher(
            admission.clone(),
            pool.clone(),
            config.depth_refresh,
            background.clone(),
        ));
        tasks.extend(long_poll.spawn(background.clone()));
        let stream_hub =
            crate::stream::Hub::new(pool.clone(), direct.clone(), config.stream_hub.clone());
        tasks.extend(stream_hub.spawn(background.clone()));
        if let Some(gauges) = config.queue_gauges.clone() {
            let gauges = crate::queue::gauges::GaugesConfig {
                schema: config.schema,
                ..gauges
            };
            tasks.push(crate::queue::gauges::spawn(
                direct,
                gauges,
                background.clone(),
            ));
        }
        let (queue_view, refresher) = queue_status::spawn_refresher(
            pool.clone(),
            config.queue_refresh,
            config.admin_key_hash,
            background.clone(),
        );
        tasks.push(refresher);
        init_metrics();
        let state = AppState {
            queue: queue_view,
            auth: Arc::new(auth::Authenticator::new(
                pool.clone(),
                config.auth_cache_ttl,
            )),
            conversations: Arc::new(crate::chat::resolver::Resolver::new(pool.clone())),
            admission,
            group_commit: Arc::new(group_commit),
            long_poll,
            stream_hub,
            pool,
            config: Arc::new(config),
            shutdown,
        };
        Api {
            state,
            background,
            tasks,
        }
    }

    /// The state the routes share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Every route, with the body limit and the JSON 404/405 answers.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until the shutdown token is cancelled, then
    /// drains: in-flight requests get `shutdown_grace`, after which the
    /// remaining connections are dropped. Stops the background tasks last.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let grace = self.state.config.shutdown_grace;
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let result = tokio::select! {
            // Drained (or failed) by itself.
            result = server => result,
            // Grace period over: drop what is left.
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_s = grace.as_secs_f64(), "grace period over; closing remaining connections");
                Ok(())
            }
        };
        self.stop().await;
        result
    }

    /// Stops the background tasks: pending submissions are written, the
    /// LISTEN connection closes, the waiter registration is removed.
    pub async fn stop(self) {
        self.background.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Creates the API's metric series at 0 (see [`crate::metrics::init_api`]):
/// every documented answer of every `/v1` route and of `/openapi.json`.
fn init_metrics() {
    let doc = <openapi::ApiDoc as utoipa::OpenApi>::openapi();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        if !(path.starts_with("/v1/") || path == "/openapi.json") {
            continue;
        }
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                for status in operation.responses.responses.keys() {
                    routes.push((path.as_str(), method, status.as_str()));
                }
            }
        }
    }
    crate::metrics::init_api(routes);
}

/// Serves `/metrics` alone on `listener` until `shutdown` (for
/// `SKIPJACK_METRICS_ADDR`).
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, health::metrics_router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The whole API as one router. `/metrics` is part of it unless
/// `metrics_addr` is configured.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let schema = health::SchemaWatch::new(state.pool.clone(), state.config.schema);
    let metrics_public = state.config.metrics_addr.is_none();
    let router = Router::new()
        .merge(chat::router())
        .merge(stream::router())
        .merge(conversations::router())
        .merge(queue_status::router())
        .merge(webhooks::router())
        .merge(admin::router())
        .merge(console::router())
        .merge(openapi::router())
        .fallback_service(observe::observed(observe::UNMATCHED, any(not_found)))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
        .merge(health::probes_router(schema, None));
    if metrics_public {
        router.merge(health::metrics_router())
    } else {
        router
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
