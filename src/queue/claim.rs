//! Claim: hands up to N ready jobs to a worker, leased, in one statement.
//!
//! At schema [`FAIR_VERSION`] and later the claim is fair between tenants
//! (`sql/queue/claim.sql`, docs/scheduling.md); a process running at an
//! older schema (the first steps of a rolling upgrade) claims in strict
//! priority order (`sql/queue/claim_strict.sql`).

use super::{sql, ClaimedJob, Result};
use crate::db::Schema;
use sqlx::PgExecutor;
use std::time::Duration;

/// The migration that brings fair scheduling (V10).
pub const FAIR_VERSION: i32 = 10;

/// Claims up to `limit` ready jobs of the given kinds for worker `owner`,
/// leased for `lease`: the highest priority first (raised by aging), tenants
/// in turn within it, each tenant's oldest first, no tenant beyond its cap
/// on running jobs. Returns at once; no lock is held after it returns. A
/// worker asks for no more jobs than it has free slots.
pub async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    owner: &str,
    limit: usize,
    lease: Duration,
    kinds: &[String],
) -> Result<Vec<ClaimedJob>> {
    claim_at(executor, owner, limit, lease, kinds, Schema::current()).await
}

/// [`claim`] for a process running at `schema`.
pub async fn claim_at<'e>(
    executor: impl PgExecutor<'e>,
    owner: &str,
    limit: usize,
    lease: Duration,
    kinds: &[String],
    schema: Schema,
) -> Result<Vec<ClaimedJob>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let statement = if schema.has(FAIR_VERSION) {
        sql::CLAIM
    } else {
        sql::CLAIM_STRICT
    };
    let jobs = sqlx::query_as::<_, ClaimedJob>(statement)
        .bind(owner)
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .bind(kinds)
        .fetch_all(executor)
        .await?;
    Ok(jobs)
}
