//! Reading the queue: one job live or finished, its events, statistics,
//! and lists of jobs for operators.

use super::{sql, JobEvent, JobState, JobView, QueueStats, Result};
use crate::ids::{JobId, TenantId};
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// A job, live or finished; `tenant` hides other tenants' jobs (`None`: any).
pub async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: JobId,
    tenant: Option<TenantId>,
) -> Result<Option<JobView>> {
    Ok(sqlx::query_as::<_, JobView>(sql::GET)
        .bind(id)
        .bind(tenant)
        .fetch_optional(executor)
        .await?)
}

/// The jobs among `ids` that exist, each as [`get`] reads it, of any
/// tenant: the caller keeps each from all but its own.
///
/// Read with the statement's generic plan: Postgres would otherwise plan it
/// afresh for every call (a custom plan looks cheaper for an array whose
/// length only it knows), and planning a read of `all_jobs` with every
/// history partition costs about seven times the read (BENCHMARKS.md).
/// The generic plan prunes the partitions as it runs; tests/sql_files.rs
/// checks that it scans no growing table.
pub async fn get_many(pool: &PgPool, ids: &[JobId]) -> Result<Vec<JobView>> {
    let mut tx = super::begin_generic_plans(pool).await?;
    let found = sqlx::query_as::<_, JobView>(sql::GET_MANY)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(found)
}

/// The exceptional transitions of a job (retries, rescues, cancellation,
/// releases), oldest first.
pub async fn events<'e>(executor: impl PgExecutor<'e>, id: JobId) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as::<_, JobEvent>(sql::EVENTS)
        .bind(id)
        .fetch_all(executor)
        .await?)
}

/// Depth by priority, jobs processing and the oldest ready job's age.
pub async fn stats<'e>(executor: impl PgExecutor<'e>) -> Result<QueueStats> {
    stats_at(executor, crate::db::Schema::current()).await
}

/// Whether any job is live (queued, delayed, blocked or processing), of
/// `tenant` when given: false once a backlog has been drained.
pub async fn has_live_jobs<'e>(
    executor: impl PgExecutor<'e>,
    tenant: Option<TenantId>,
) -> Result<bool> {
    let query = match tenant {
        Some(tenant) => sqlx::query_scalar(sql::HAS_LIVE_JOBS_OF_TENANT).bind(tenant),
        None => sqlx::query_scalar(sql::HAS_LIVE_JOBS),
    };
    Ok(query.fetch_one(executor).await?)
}

/// [`stats`] for a process running at `schema` (before
/// [`super::FAIR_VERSION`]: no per-tenant waits).
pub async fn stats_at<'e>(
    executor: impl PgExecutor<'e>,
    schema: crate::db::Schema,
) -> Result<QueueStats> {
    let statement = if schema.has(super::FAIR_VERSION) {
        sql::STATS
    } else {
        sql::STATS_STRICT
    };
    let (depth, processing, oldest, tenant_waits): (
        serde_json::Value,
        i64,
        f64,
        serde_json::Value,
    ) = sqlx::query_as(statement).fetch_one(executor).await?;
    let tenant_waits = serde_json::from_value(tenant_waits).unwrap_or_default();
    let depth = depth
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(QueueStats {
        depth,
        processing,
        oldest_queued_age_seconds: oldest,
        tenant_waits,
    })
}

/// Which jobs [`list`] returns.
#[derive(Clone, Debug)]
pub struct JobFilter {
    /// Only jobs in this state (`None`: any).
    pub state: Option<JobState>,
    /// Only this tenant's jobs (`None`: any).
    pub tenant: Option<TenantId>,
    /// Only jobs finished (or, while live, created) at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Most jobs returned.
    pub limit: i64,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            state: None,
            tenant: None,
            since: None,
            limit: 100,
        }
    }
}

/// Jobs matching `filter`, newest first (by finish time, or creation time
/// while live).
pub async fn list<'e>(executor: impl PgExecutor<'e>, filter: &JobFilter) -> Result<Vec<JobView>> {
    Ok(sqlx::query_as::<_, JobView>(sql::LIST)
        .bind(filter.state)
        .bind(filter.tenant)
        .bind(filter.since)
        .bind(filter.limit.max(0))
        .fetch_all(executor)
        .await?)
}

/// Queued jobs per tenant (`None`: jobs of no tenant), webhook deliveries
/// left out: the counts the API's admission control holds tenants to.
pub async fn queued_by_tenant<'e>(
    executor: impl PgExecutor<'e>,
) -> sqlx::Result<Vec<(Option<TenantId>, i64)>> {
    sqlx::query_as(sql::QUEUED_BY_TENANT)
        .fetch_all(executor)
        .await
}

/// One row of [`depth_by_tenant_priority`].
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct TenantPriorityDepth {
    /// The tenant; `None` for jobs of no tenant.
    pub tenant_id: Option<TenantId>,
    /// The priority.
    pub priority: i16,
    /// Jobs queued (ready, delayed or blocked).
    pub queued: i64,
    /// Jobs being processed.
    pub processing: i64,
    /// Age in seconds of the oldest job ready to run now; `None` when none is.
    pub oldest_ready_age_seconds: Option<f64>,
}

/// The live queue per tenant and priority, in one grouped statement.
pub async fn depth_by_tenant_priority<'e>(
    executor: impl PgExecutor<'e>,
) -> sqlx::Result<Vec<TenantPriorityDepth>> {
    sqlx::query_as(sql::DEPTH_BY_TENANT_PRIORITY)
        .fetch_all(executor)
        .await
}

/// Which of `ids` exist, live or finished, with their creation time: after
/// an enqueue whose answer was lost, the jobs it inserted exist exactly if
/// it committed.
pub async fn stored<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[JobId],
) -> sqlx::Result<Vec<(JobId, DateTime<Utc>)>> {
    sqlx::query_as(sql::STORED)
        .bind(ids)
        .fetch_all(executor)
        .await
}
