//! Retrying by hand: a failed or cancelled job back in the queue as a new
//! attempt, with its history intact (`retry.sql`).

use super::{is_transient, read, sql, JobState, QueueError, Result};
use crate::ids::{JobId, TenantId};
use sqlx::PgPool;

/// Puts failed or cancelled job `id` back in the queue: same id, queued,
/// its attempt counter where it was, a fresh budget of attempts, and a
/// `retried` event (worker `manual`, with the previous error). `tenant`
/// limits it to one tenant's jobs (`None` for operators).
///
/// Refused with `NotFound` (no such job for this tenant), `NotRetryable`
/// (live, completed, or 100 attempts used) or `ConversationMovedOn` (a
/// later job of its conversation exists, live or finished).
pub async fn retry(pool: &PgPool, id: JobId, tenant: Option<TenantId>) -> Result<()> {
    let mut tries = 0;
    loop {
        match retry_once(pool, id, tenant).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

async fn retry_once(pool: &PgPool, id: JobId, tenant: Option<TenantId>) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(sql::LOCK_LANE_FINISHED)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let row: Option<(JobId, String, JobState)> = sqlx::query_as(sql::RETRY)
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        Some((_, verdict, _)) if verdict == "retried" => {
            tx.commit().await?;
            Ok(())
        }
        Some((_, verdict, state)) => {
            drop(tx);
            Err(match verdict.as_str() {
                "moved_on" => QueueError::ConversationMovedOn(id),
                "exhausted" => QueueError::NotRetryable {
                    id,
                    state,
                    detail: ": it has used the most attempts a job may have (100)",
                },
                // 'completed', or 'raced': another statement moved the job
                // first; say what it is now.
                _ => match read::get(pool, id, tenant).await? {
                    None => QueueError::NotFound(id),
                    Some(job) => QueueError::NotRetryable {
                        id,
                        state: job.state,
                        detail: "",
                    },
                },
            })
        }
        None => {
            drop(tx);
            match read::get(pool, id, tenant).await? {
                None => Err(QueueError::NotFound(id)),
                Some(job) => Err(QueueError::NotRetryable {
                    id,
                    state: job.state,
                    detail: "",
                }),
            }
        }
    }
}
