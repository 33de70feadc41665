//! `GET /v1/queue`: the queue as the caller may see it, for clients that
//! pace themselves.
//!
//! A tenant's key sees its own jobs only: its depth by priority, its jobs
//! being processed and its oldest ready job's age. Nothing about other
//! tenants leaks, not even through totals. The whole queue (all tenants,
//! and jobs of no tenant) is the admin view, for the key configured as
//! `SKIPJACK_ADMIN_KEY`; the process keeps only that key's SHA-256 and
//! compares hashes in constant time. Without the setting there is no admin
//! view over HTTP (`skipjack stats` and the Prometheus gauges remain).
//!
//! No request counts anything. [`spawn_refresher`] reads the queue per
//! tenant and priority with one grouped query (`sql/queue/depth_by_tenant_priority.sql`)
//! every `queue_refresh` (1 s), and requests answer from that snapshot, so
//! the answer is at most about one interval old (`as_of` says when it was
//! taken) and a crowd of pollers costs the database nothing more.

use super::auth::{bearer_key, Caller};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::observe::observed;
use super::AppState;
use crate::ids::TenantId;
use crate::queue::QueueStats;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How long a request waits for the first snapshot of a process that has
/// just started before it answers 503.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// At most this share of the refresher's time goes to its query: a backlog
/// far past the limits slows the refresh instead of keeping a core busy.
const MAX_DUTY_CYCLE: f64 = 0.1;

/// The `/v1/queue` route.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/queue", observed("/v1/queue", get(stats)))
}

/// Whose queue an answer describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueScope {
    /// The calling tenant's jobs.
    Tenant,
    /// Every job (admin key only).
    All,
}

/// The queue as the caller may see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResponse {
    /// `tenant`: the caller's jobs only; `all`: every tenant's (admin key).
    pub scope: QueueScope,
    /// Queued jobs (ready, delayed or waiting for their conversation).
    pub total: i64,
    /// Queued jobs by priority ("1".."10"); absent priorities have none.
    pub depth: BTreeMap<String, i64>,
    /// Jobs being processed.
    pub processing: i64,
    /// Age of the oldest job ready to run now; 0 when none is.
    pub oldest_queued_age_seconds: f64,
    /// When the snapshot these numbers come from was taken (refreshed
    /// about every second).
    pub as_of: DateTime<Utc>,
}

/// The queue per tenant at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Each tenant's share of the queue.
    pub tenants: HashMap<TenantId, QueueStats>,
    /// Every job, tenants' and others'.
    pub all: QueueStats,
    /// When the snapshot was read.
    pub as_of: DateTime<Utc>,
}

fn empty() -> QueueStats {
    QueueStats {
        depth: BTreeMap::new(),
        processing: 0,
        oldest_queued_age_seconds: 0.0,
        tenant_waits: Vec::new(),
    }
}

fn add(stats: &mut QueueStats, priority: i16, queued: i64, processing: i64, oldest: Option<f64>) {
    if queued > 0 {
        *stats.depth.entry(priority).or_default() += queued;
    }
    stats.processing += processing;
    if let Some(age) = oldest {
        stats.oldest_queued_age_seconds = stats.oldest_queued_age_seconds.max(age);
    }
}

impl Snapshot {
    /// Reads the queue (one statement).
    pub async fn read(pool: &PgPool) -> sqlx::Result<Snapshot> {
        let rows = crate::queue::read::depth_by_tenant_priority(pool).await?;
        let mut snapshot = Snapshot {
            tenants: HashMap::new(),
            all: empty(),
            as_of: Utc::now(),
        };
        for row in rows {
            let (tenant, priority, queued, processing, oldest) = (
                row.tenant_id,
                row.priority,
                row.queued,
                row.processing,
                row.oldest_ready_age_seconds,
            );
            add(&mut snapshot.all, priority, queued, processing, oldest);
            if let Some(tenant) = tenant {
                let stats = snapshot.tenants.entry(tenant).or_insert_with(empty);
                add(stats, priority, queued, processing, oldest);
            }
        }
        Ok(snapshot)
    }
}

/// The latest snapshot, shared by the refresher and the requests.
pub struct QueueView {
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
    /// The SHA-256 of `SKIPJACK_ADMIN_KEY`, if set.
    admin_key_hash: Option<[u8; 32]>,
}

impl QueueView {
    /// The latest snapshot, waiting up to [`FIRST_SNAPSHOT_WAIT`] for the
    /// first one.
    pub(crate) async fn snapshot(&self) -> ApiResult<Arc<Snapshot>> {
        if let Some(snapshot) = self.latest.borrow().clone() {
            return Ok(snapshot);
        }
        let mut latest = self.latest.clone();
        let ready = tokio::time::timeout(FIRST_SNAPSHOT_WAIT, async {
            latest
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|snapshot| snapshot.clone())
        });
        ready
            .await
            .ok()
            .flatten()
            .ok_or(ApiError::Unavailable("queue statistics not read yet"))
    }

    /// True when `key` is the admin key.
    pub(crate) fn is_admin(&self, key: &str) -> bool {
        self.admin_key_hash.is_some_and(|expected| {
            let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            bool::from(presented.ct_eq(&expected))
        })
    }
}

/// Starts the refresher: a snapshot at once, then every `every` (or less
/// often while the query is slow), until `stop`. `admin_key_hash` is the
/// SHA-256 of the admin key, if one is configured.
pub fn spawn_refresher(
    pool: PgPool,
    every: Duration,
    admin_key_hash: Option<[u8; 32]>,
    stop: CancellationToken,
) -> (Arc<QueueView>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut pause = Duration::ZERO;
        let mut failing = false;
        loop {
            tokio::select! {
                // Shutting down.
                _ = stop.cancelled() => return,
                // Time for the next read.
                _ = tokio::time::sleep(pause) => {}
            }
            let started = std::time::Instant::now();
            match Snapshot::read(&pool).await {
                Ok(snapshot) => {
                    failing = false;
                    tx.send_replace(Some(Arc::new(snapshot)));
                }
                Err(error) => {
                    // Keep answering from the last snapshot (`as_of` shows
                    // its age); log once per outage.
                    if !failing {
                        tracing::warn!(%error, "cannot refresh the queue snapshot");
                    }
                    failing = true;
                }
            }
            let took = started.elapsed();
            pause = every.max(took.mul_f64((1.0 - MAX_DUTY_CYCLE) / MAX_DUTY_CYCLE));
        }
    });
    let view = QueueView {
        latest: rx,
        admin_key_hash,
    };
    (Arc::new(view), task)
}

/// Who asks: a tenant, or the holder of the admin key.
#[derive(Clone, Copy, Debug)]
pub enum Viewer {
    /// A tenant, who sees its own jobs.
    Tenant(TenantId),
    /// The admin key, which sees the whole queue.
    Admin,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let is_admin = bearer_key(parts).is_some_and(|key| state.queue.is_admin(key));
        if is_admin {
            return Ok(Viewer::Admin);
        }
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(Viewer::Tenant(caller.tenant))
    }
}

/// The caller's queue: its depth by priority, jobs processing and oldest
/// ready job's age (the whole queue for the admin key).
#[utoipa::path(
    get, path = "/v1/queue", tag = "queue",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's queue, from a snapshot at most about a second old. \
A tenant key sees its own jobs only; the admin key (SKIPJACK_ADMIN_KEY) sees every tenant's, with scope `all`.", body = QueueResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "Queue statistics not read yet (the process has just started) or database unavailable", body = ErrorBody),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    viewer: Viewer,
) -> ApiResult<Json<QueueResponse>> {
    let snapshot = state.queue.snapshot().await?;
    let empty = empty();
    let (scope, stats) = match viewer {
        Viewer::Admin => (QueueScope::All, &snapshot.all),
        Viewer::Tenant(tenant) => (
            QueueScope::Tenant,
            snapshot.tenants.get(&tenant).unwrap_or(&empty),
        ),
    };
    Ok(Json(QueueResponse {
        scope,
        total: stats.total(),
        depth: stats
            .depth
            .iter()
            .map(|(priority, n)| (priority.to_string(), *n))
            .collect(),
        processing: stats.processing,
        oldest_queued_age_seconds: stats.oldest_queued_age_seconds,
        as_of: snapshot.as_of,
    }))
}

/// The SHA-256 of an admin key, as [`spawn_refresher`] takes it.
pub fn admin_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
