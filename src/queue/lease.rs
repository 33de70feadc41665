//! Leases: heartbeats keep them, the rescuer takes back expired ones, and a
//! worker shutting down releases the ones it cannot finish.

use super::{finish::unblock, is_transient, sql, AttemptId, JobState, QueueError, Result};
use crate::ids::{ConversationId, JobId};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgExecutor, PgPool, Postgres};
use std::time::Duration;

/// Extends to now + `lease` the leases of all of `owner`'s running attempts
/// in one statement. Returns the attempts the worker no longer holds (the
/// job was rescued, maybe claimed again as a newer attempt, or finished):
/// it should stop working on those, and only those.
pub async fn heartbeat<'e>(
    executor: impl PgExecutor<'e>,
    owner: &str,
    lease: Duration,
    running: &[AttemptId],
) -> Result<Vec<AttemptId>> {
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<JobId> = running.iter().map(|a| a.job).collect();
    let attempts: Vec<i32> = running.iter().map(|a| a.attempt).collect();
    let lost: Vec<(JobId, i32)> = sqlx::query_as(sql::HEARTBEAT)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(executor)
        .await?;
    Ok(lost
        .into_iter()
        .map(|(job, attempt)| AttemptId { job, attempt })
        .collect())
}

/// What one rescue pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescueReport {
    /// Expired jobs with attempts left, back in the queue.
    pub requeued: Vec<JobId>,
    /// Expired jobs that had used their last attempt, now failed.
    pub failed: Vec<JobId>,
}

/// Takes back up to `limit` jobs whose lease expired. Safe to run in every
/// process at once.
pub async fn rescue(pool: &PgPool, limit: usize) -> Result<RescueReport> {
    let rows = take_back(pool, || sqlx::query_as(sql::RESCUE).bind(limit as i64)).await?;
    let mut report = RescueReport::default();
    for (id, state) in rows {
        match state {
            JobState::Failed => report.failed.push(id),
            _ => report.requeued.push(id),
        }
    }
    Ok(report)
}

/// Gives back `owner`'s leases on `ids` (at shutdown) so another worker can
/// take the jobs at once. The interrupted attempt counts: a job on its last
/// attempt fails instead (and its conversation moves on). Returns the ids
/// released, with the state each is in now.
pub async fn release(pool: &PgPool, owner: &str, ids: &[JobId]) -> Result<Vec<(JobId, JobState)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let released = take_back(pool, || sqlx::query_as(sql::RELEASE).bind(owner).bind(ids)).await?;
    super::finish::count_finished(released.iter().map(|(_, state)| *state));
    Ok(released)
}

/// A row of rescue.sql and release.sql: a job taken back from its worker,
/// its conversation, and its state now (queued, or failed into history).
type TakenBack = (JobId, Option<ConversationId>, JobState);

/// Runs a statement that takes jobs back from their workers (`query` makes
/// it afresh for each try) and, in the same transaction, unblocks the
/// conversations whose head job it failed; retried on deadlock. Returns
/// each job with its state now.
async fn take_back<'q, F>(pool: &PgPool, query: F) -> Result<Vec<(JobId, JobState)>>
where
    F: Fn() -> QueryAs<'q, Postgres, TakenBack, PgArguments>,
{
    let mut tries = 0;
    loop {
        match take_back_once(pool, query()).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

async fn take_back_once(
    pool: &PgPool,
    query: QueryAs<'_, Postgres, TakenBack, PgArguments>,
) -> Result<Vec<(JobId, JobState)>> {
    let mut tx = pool.begin().await?;
    let rows = query.fetch_all(&mut *tx).await?;
    let heads: Vec<ConversationId> = rows
        .iter()
        .filter(|(_, _, state)| *state == JobState::Failed)
        .filter_map(|(_, conversation, _)| *conversation)
        .collect();
    unblock(&mut tx, &heads).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|(id, _, state)| (id, state)).collect())
}
