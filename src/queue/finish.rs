//! Finishing jobs: complete, retry, fail (batched and fenced) and cancel.
//!
//! A finish moves the job from `jobs` to `job_history` in one statement
//! (`finish.sql`), then, in the same transaction, unblocks the next job of
//! each conversation whose head job left (`unblock.sql`). A worker batches
//! the outcomes of many jobs into one such transaction under load.

use super::{is_transient, read, sql, JobState, Lease, Outcome, QueueError, Result};
use crate::ids::{ConversationId, JobId, TenantId};
use crate::metrics::metrics;
use crate::text::{json_without_nul, without_nul};
use rand::Rng;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::borrow::Cow;
use std::time::Duration;

/// Exponential backoff with jitter for retried jobs that named no delay.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Delay after the first failed attempt, before jitter.
    pub base: Duration,
    /// Upper bound of the delay, before jitter.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt + 1`: `base * 2^(attempt-1)` capped
    /// at `max`, then drawn uniformly from its upper half so that jobs that
    /// failed together do not come back together.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.clamp(1, 31) as u32 - 1;
        let full = self
            .base
            .checked_mul(1u32 << exponent.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// The delay before a retried attempt: `min(max(retry_after,
    /// delay(attempt)), max)`. The upstream's `Retry-After` is a lower
    /// bound, never a shortcut (an upstream that answers `Retry-After: 0`
    /// to everything must not burn every attempt in a second) and never
    /// longer than `max` (`Retry-After: 86400` must not park a
    /// conversation for a day, nor an absurd value overflow the interval
    /// arithmetic in SQL).
    pub fn retry_delay(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.delay(attempt);
        retry_after
            .map_or(backoff, |asked| asked.max(backoff))
            .min(self.max)
    }
}

/// The outcome of one attempt, for [`finish`].
#[derive(Clone, Copy, Debug)]
pub struct FinishItem<'a> {
    /// The job the outcome is for.
    pub job: JobId,
    /// The attempt the outcome belongs to (part of the fence).
    pub attempt: i32,
    /// What the attempt came to.
    pub outcome: &'a Outcome,
}

/// Counts `states` that are final in `skipjack_jobs_finished_total`, by
/// outcome: the one place that metric moves. The queue's functions that
/// finish jobs in a transaction of their own ([`finish`], [`cancel`],
/// [`super::release`]) call it once that transaction committed; a caller of
/// [`finish_in_tx`] calls it after committing the transaction it passed.
pub(crate) fn count_finished(states: impl IntoIterator<Item = JobState>) {
    let m = metrics();
    for state in states.into_iter().filter(|s| s.is_final()) {
        m.jobs_finished.with_label_values(&[state.as_str()]).inc();
    }
}

/// Begins a transaction whose statements keep their generic plans
/// (`begin_generic_plans.sql` says why): the one that writes a batch of
/// outcomes, with a handler's [`crate::worker::Handler::on_completed`], and
/// the history loader's reads.
pub async fn begin_generic_plans(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    Ok(pool.begin_with(sql::BEGIN_GENERIC_PLANS).await?)
}

/// Writes a batch of outcomes of worker `owner` in its own transaction,
/// retried on deadlock. See [`finish_in_tx`].
pub async fn finish(
    pool: &PgPool,
    owner: &str,
    items: &[FinishItem<'_>],
    backoff: &Backoff,
) -> Result<Vec<Option<JobState>>> {
    let mut tries = 0;
    loop {
        let mut tx = begin_generic_plans(pool).await?;
        match finish_in_tx(&mut tx, owner, items, backoff).await {
            Ok(states) => {
                tx.commit().await?;
                count_finished(states.iter().flatten().copied());
                return Ok(states);
            }
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes a batch of outcomes of worker `owner` inside `tx`. Returns, in
/// input order, the state each job is in now: `Queued` for a retry with
/// attempts left or a snooze, `Completed` or `Failed` for a job that moved to history,
/// and `None` for a job this worker's lease no longer covers (nothing about
/// it was changed). The caller counts the finished ones with
/// `count_finished` once `tx` committed.
pub async fn finish_in_tx(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
    items: &[FinishItem<'_>],
    backoff: &Backoff,
) -> Result<Vec<Option<JobState>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    // Outcomes reach SQL without NUL, whoever made them (see crate::text).
    let mut results: Vec<Option<Cow<'_, Value>>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(n);
    let mut retry_in: Vec<f64> = Vec::with_capacity(n);
    let mut input_tokens: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut output_tokens: Vec<Option<i32>> = Vec::with_capacity(n);
    for item in items {
        ids.push(item.job);
        attempts.push(item.attempt);
        match item.outcome {
            Outcome::Completed { result, usage } => {
                outcomes.push("completed");
                results.push(Some(json_without_nul(result)));
                errors.push(None);
                retry_in.push(0.0);
                input_tokens.push(usage.map(|u| u.input_tokens));
                output_tokens.push(usage.map(|u| u.output_tokens));
            }
            Outcome::Retry { error, retry_after } => {
                outcomes.push("retry");
                results.push(None);
                errors.push(Some(without_nul(error)));
                let delay = backoff.retry_delay(item.attempt, *retry_after);
                retry_in.push(delay.as_secs_f64());
                input_tokens.push(None);
                output_tokens.push(None);
            }
            Outcome::Snooze { delay, reason } => {
                outcomes.push("snooze");
                results.push(None);
                errors.push(Some(without_nul(reason)));
                // Bounded like a retry's delay (and so the interval
                // arithmetic in SQL).
                retry_in.push((*delay).min(backoff.max).as_secs_f64());
                input_tokens.push(None);
                output_tokens.push(None);
            }
            Outcome::Failed { error } => {
                outcomes.push("failed");
                results.push(None);
                errors.push(Some(without_nul(error)));
                retry_in.push(0.0);
                input_tokens.push(None);
                output_tokens.push(None);
            }
        }
    }
    let rows: Vec<(JobId, Option<ConversationId>, JobState)> = sqlx::query_as(sql::FINISH)
        .bind(owner)
        .bind(&ids)
        .bind(&attempts)
        .bind(&outcomes)
        .bind(results.iter().map(|r| r.as_deref()).collect::<Vec<_>>())
        .bind(errors.iter().map(|e| e.as_deref()).collect::<Vec<_>>())
        .bind(&retry_in)
        .bind(&input_tokens)
        .bind(&output_tokens)
        .fetch_all(&mut **tx)
        .await?;

    let heads: Vec<ConversationId> = rows
        .iter()
        .filter(|(_, _, state)| state.is_final())
        .filter_map(|(_, conversation, _)| *conversation)
        .collect();
    unblock(tx, &heads).await?;

    let states: std::collections::HashMap<JobId, JobState> =
        rows.into_iter().map(|(id, _, state)| (id, state)).collect();
    Ok(ids.iter().map(|id| states.get(id).copied()).collect())
}

/// Writes one outcome under `lease`; `Err(LeaseLost)` when the lease no
/// longer holds.
pub async fn finish_one(
    pool: &PgPool,
    lease: &Lease,
    outcome: &Outcome,
    backoff: &Backoff,
) -> Result<JobState> {
    let item = FinishItem {
        job: lease.job,
        attempt: lease.attempt,
        outcome,
    };
    finish(pool, &lease.owner, &[item], backoff)
        .await?
        .remove(0)
        .ok_or(QueueError::LeaseLost(lease.job))
}

/// Lets the next job of each conversation in `heads` be claimed; run in the
/// transaction that finished their head jobs.
pub(super) async fn unblock(conn: &mut PgConnection, heads: &[ConversationId]) -> Result<u64> {
    if heads.is_empty() {
        return Ok(0);
    }
    let (unblocked, _notified): (i64, i64) = sqlx::query_as(sql::UNBLOCK)
        .bind(heads)
        .fetch_one(conn)
        .await?;
    Ok(unblocked as u64)
}

/// Cancels a live job: a queued one (blocked or not) or one being
/// processed. `tenant` limits it to one tenant's jobs (`None` for
/// operators). Returns the state the job was in. A finished job is
/// `NotCancellable` (with its state); a job of another tenant is
/// `NotFound`.
///
/// A processing job leaves `jobs` in the same statement, and its worker is
/// told on [`super::CANCEL_CHANNEL`] to drop the attempt; whichever of the
/// cancel and the worker's fenced finish commits first wins, the other
/// changes nothing.
pub async fn cancel(
    pool: &PgPool,
    id: JobId,
    tenant: Option<TenantId>,
    reason: &str,
) -> Result<JobState> {
    let mut tries = 0;
    let mut busy = 0;
    loop {
        match cancel_once(pool, id, tenant, reason).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < 3 => tries += 1,
            // The job's row was held by a finish waiting for the
            // conversation's row (see lock_job_nowait.sql): start again,
            // and the next look waits for that finish instead.
            Err(QueueError::Database(e)) if is_lock_not_available(&e) && busy < 100 => {
                busy += 1;
                tokio::task::yield_now().await;
            }
            other => return other,
        }
    }
}

/// A `NOWAIT` lock that another transaction held.
fn is_lock_not_available(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03")
}

async fn cancel_once(
    pool: &PgPool,
    id: JobId,
    tenant: Option<TenantId>,
    reason: &str,
) -> Result<JobState> {
    let mut tx = pool.begin().await?;
    // A running job is locked before its conversation (as finish does); a
    // queued one after it (as unblock does), without waiting. See cancel.sql.
    sqlx::query(sql::LOCK_RUNNING)
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(sql::LOCK_LANE)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(sql::LOCK_JOB_NOWAIT)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let cancelled: Option<(JobId, Option<ConversationId>, bool, JobState)> =
        sqlx::query_as(sql::CANCEL)
            .bind(id)
            .bind(tenant)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?;
    match cancelled {
        Some((_, conversation, blocked, was)) => {
            if let (Some(conversation), false) = (conversation, blocked) {
                unblock(&mut tx, &[conversation]).await?;
            }
            tx.commit().await?;
            count_finished([JobState::Cancelled]);
            Ok(was)
        }
        None => {
            drop(tx);
            match read::get(pool, id, tenant).await? {
                None => Err(QueueError::NotFound(id)),
                Some(job) => Err(QueueError::NotCancellable {
                    id,
                    state: job.state,
                }),
            }
        }
    }
}
