//! Leases: heartbeats keep them, the rescuer takes back expired ones, and a
//! worker shutting down releases the ones it cannot finish.

use super::{finish::unblock, is_transient, sql, AttemptId, JobState, QueueError, Result};
use crate::ids::{ConversationId, JobId};
use sqlx::{PgExecutor, PgPool};
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
    let mut tries = 0;
    loop {
        match rescue_once(pool, limit).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

async fn rescue_once(pool: &PgPool, limit: usize) -> Result<RescueReport> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(JobId, Option<ConversationId>, JobState)> = sqlx::query_as(sql::RESCUE)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
    let heads: Vec<ConversationId> = rows
        .iter()
        .filter(|(_, _, state)| *state == JobState::Failed)
        .filter_map(|(_, conversation, _)| *conversation)
        .collect();
    unblock(&mut tx, &heads).await?;
    tx.commit().await?;
    let mut report = RescueReport::default();
    for (id, _, state) in rows {
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
    let mut tries = 0;
    loop {
        match release_once(pool, owner, ids).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

async fn release_once(pool: &PgPool, owner: &str, ids: &[JobId]) -> Result<Vec<(JobId, JobState)>> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(JobId, Option<ConversationId>, JobState)> = sqlx::query_as(sql::RELEASE)
        .bind(owner)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    let heads: Vec<ConversationId> = rows
        .iter()
        .filter(|(_, _, state)| *state == JobState::Failed)
        .filter_map(|(_, conversation, _)| *conversation)
        .collect();
    unblock(&mut tx, &heads).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|(id, _, state)| (id, state)).collect())
}
