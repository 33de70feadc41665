//! Claim: hands up to N ready jobs to a worker, leased, in one statement.

use super::{sql, ClaimedJob, Result};
use sqlx::PgExecutor;
use std::time::Duration;

/// Claims up to `limit` ready jobs of the given kinds for worker `owner`,
/// highest priority first, then oldest, leased for `lease`. Returns at once;
/// no lock is held after it returns. A worker asks for no more jobs than it
/// has free slots.
pub async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    owner: &str,
    limit: usize,
    lease: Duration,
    kinds: &[String],
) -> Result<Vec<ClaimedJob>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let jobs = sqlx::query_as::<_, ClaimedJob>(sql::CLAIM)
        .bind(owner)
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .bind(kinds)
        .fetch_all(executor)
        .await?;
    Ok(jobs)
}
