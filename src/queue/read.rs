//! Reading the queue: one job live or finished, its events, and statistics.

use super::{sql, JobEvent, JobView, QueueStats, Result};
use crate::ids::{JobId, TenantId};
use sqlx::PgExecutor;

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
    let (depth, processing, oldest): (serde_json::Value, i64, f64) =
        sqlx::query_as(sql::STATS).fetch_one(executor).await?;
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
    })
}
