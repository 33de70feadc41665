//! Enqueue: one statement for any number of jobs.
//!
//! Takes a `&mut PgConnection`, so it runs inside the caller's transaction
//! when given one (`&mut *tx`): the jobs appear exactly when the caller's own
//! writes do. The statement sends at most one NOTIFY, and none while no
//! worker waits.

use super::{sql, Enqueued, NewJob, QueueError, Result};
use crate::ids::{ConversationId, JobId, TenantId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// A row of enqueue.sql: (ord, job id, inserted, the key's stored
/// fingerprint, the transaction's time).
type EnqueueRow = (i64, Option<JobId>, bool, Option<Vec<u8>>, DateTime<Utc>);

/// Enqueues one job.
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued> {
    let mut out = enqueue_many(conn, std::slice::from_ref(job)).await?;
    // enqueue_many returns exactly one entry per input job.
    Ok(out.remove(0))
}

/// Enqueues `jobs` in one statement; the result is in input order. A job
/// whose idempotency key (per tenant) already names a job is not inserted:
/// its entry carries the existing job's id and `inserted: false`, and
/// `key_reused: true` if that job was enqueued for a request with another
/// fingerprint.
pub async fn enqueue_many(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    Ok(enqueue_timed(conn, jobs).await?.0)
}

/// [`enqueue_many`], with the transaction's time: every inserted job's
/// `created_at` (none for no jobs).
async fn enqueue_timed(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<(Vec<Enqueued>, Option<DateTime<Utc>>)> {
    let ids: Vec<JobId> = jobs.iter().map(|_| JobId::new()).collect();
    let (mut out, created_at) = insert(conn, jobs, ids).await?;

    // A key taken by a transaction that committed while this statement ran
    // (or twice within this batch) is invisible to the statement's snapshot:
    // look those up again in a fresh statement.
    let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
    if !missing.is_empty() {
        let tenants: Vec<Option<TenantId>> = missing.iter().map(|&i| jobs[i].tenant_id).collect();
        let keys: Vec<Option<&str>> = missing
            .iter()
            .map(|&i| jobs[i].idempotency_key.as_deref())
            .collect();
        let found: Vec<(i64, JobId, Option<Vec<u8>>)> = sqlx::query_as(sql::IDEMPOTENCY_LOOKUP)
            .bind(&tenants)
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?;
        for (ord, id, stored) in found {
            let index = missing[(ord - 1) as usize];
            out[index] = Some(Enqueued {
                id,
                inserted: false,
                key_reused: reused(&jobs[index], stored.as_deref()),
            });
        }
    }
    let enqueued = out
        .into_iter()
        .zip(jobs)
        .map(|(entry, job)| {
            // Only reachable if the key's owner rolled back between the
            // two statements; the caller may simply submit again.
            entry.ok_or_else(|| held_by_rolled_back(job))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((enqueued, created_at))
}

/// The error of a job whose idempotency key was held by a transaction that
/// rolled back.
pub(crate) fn held_by_rolled_back(job: &NewJob) -> QueueError {
    QueueError::Invalid(format!(
        "idempotency key {:?} is held by a job that was rolled back; retry",
        job.idempotency_key
    ))
}

/// The insert statement for `jobs`, with their new `ids`: each job's entry
/// (`None` for a job whose key a transaction the statement's snapshot
/// cannot see has taken), and the transaction's time.
async fn insert(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    ids: Vec<JobId>,
) -> Result<(Vec<Option<Enqueued>>, Option<DateTime<Utc>>)> {
    if jobs.is_empty() {
        return Ok((Vec::new(), None));
    }
    for job in jobs {
        validate(job)?;
    }
    if jobs
        .iter()
        .all(|j| j.idempotency_key.is_none() && j.conversation_id.is_none())
    {
        return enqueue_simple(conn, jobs, ids).await;
    }
    let tenants: Vec<Option<TenantId>> = jobs.iter().map(|j| j.tenant_id).collect();
    let conversations: Vec<Option<ConversationId>> =
        jobs.iter().map(|j| j.conversation_id).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority.get()).collect();
    let payloads: Vec<&Value> = jobs.iter().map(|j| &j.payload).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let run_at: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let fingerprints: Vec<Option<&[u8]>> = jobs
        .iter()
        .map(|j| j.idempotency_fingerprint.as_deref())
        .collect();

    let rows: Vec<EnqueueRow> = sqlx::query_as(sql::ENQUEUE)
        .bind(&ids)
        .bind(&tenants)
        .bind(&conversations)
        .bind(&kinds)
        .bind(&priorities)
        .bind(&payloads)
        .bind(&keys)
        .bind(&max_attempts)
        .bind(&run_at)
        .bind(&fingerprints)
        .fetch_all(&mut *conn)
        .await?;
    let created_at = rows.first().map(|row| row.4);
    let out = rows
        .into_iter()
        .zip(jobs)
        .map(|((_, id, inserted, stored, _), job)| {
            id.map(|id| Enqueued {
                id,
                inserted,
                key_reused: !inserted && reused(job, stored.as_deref()),
            })
        })
        .collect();
    Ok((out, created_at))
}

async fn enqueue_simple(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    ids: Vec<JobId>,
) -> Result<(Vec<Option<Enqueued>>, Option<DateTime<Utc>>)> {
    let tenants: Vec<Option<TenantId>> = jobs.iter().map(|j| j.tenant_id).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority.get()).collect();
    let payloads: Vec<&Value> = jobs.iter().map(|j| &j.payload).collect();
    let max_attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let run_at: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let rows: Vec<(JobId, DateTime<Utc>)> = sqlx::query_as(sql::ENQUEUE_SIMPLE)
        .bind(&ids)
        .bind(&tenants)
        .bind(&kinds)
        .bind(&priorities)
        .bind(&payloads)
        .bind(&max_attempts)
        .bind(&run_at)
        .fetch_all(conn)
        .await?;
    let created_at = rows.first().map(|row| row.1);
    debug_assert!(rows.iter().map(|row| row.0).eq(ids.iter().copied()));
    let enqueued = rows
        .into_iter()
        .map(|(id, _)| {
            Some(Enqueued {
                id,
                inserted: true,
                key_reused: false,
            })
        })
        .collect();
    Ok((enqueued, created_at))
}

/// True when `job`'s key is held for a different request: both the stored
/// fingerprint and the job's are known, and they differ.
fn reused(job: &NewJob, stored: Option<&[u8]>) -> bool {
    match (job.idempotency_fingerprint.as_deref(), stored) {
        (Some(mine), Some(theirs)) => mine != theirs,
        _ => false,
    }
}

fn validate(job: &NewJob) -> Result<()> {
    if job.kind.is_empty() || job.kind.len() > 100 {
        return Err(QueueError::Invalid(
            "kind must be 1 to 100 characters".into(),
        ));
    }
    if !(1..=100).contains(&job.max_attempts) {
        return Err(QueueError::Invalid(
            "max_attempts must be between 1 and 100".into(),
        ));
    }
    if let Some(key) = &job.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(QueueError::Invalid(
                "idempotency key must be 1 to 256 characters".into(),
            ));
        }
    }
    Ok(())
}

/// A batch written by [`enqueue_batch`].
#[derive(Debug)]
pub struct Batch {
    /// The transaction's time: every inserted job's `created_at`.
    pub created_at: DateTime<Utc>,
    /// Each job's entry, in input order (see [`enqueue_many`]); `None` for
    /// a job whose idempotency key a transaction the statement could not
    /// see has taken (one that committed while it ran, or an earlier job
    /// of the same batch). Enqueued again, alone, such a job finds that
    /// key's job, or takes the key if its holder rolled back.
    pub enqueued: Vec<Option<Enqueued>>,
}

/// Why [`enqueue_batch`] has no batch.
#[derive(Debug)]
pub enum BatchError {
    /// Nothing was sent: a job is invalid, or no connection was had.
    Failed(QueueError),
    /// The statement failed. If the server answered with the error, nothing
    /// was written. If the answer was lost on the way (the connection went
    /// away, possibly while the server was committing), the batch may be
    /// stored all the same: a job was stored exactly if
    /// [`super::read::stored`] finds its id among `ids`.
    Statement {
        /// What the statement returned.
        error: sqlx::Error,
        /// The ids the batch's jobs were given, in input order.
        ids: Vec<JobId>,
    },
}

/// Enqueues `jobs` with one statement that is its own transaction on
/// `pool` (one round trip; its insert wakes idle workers at the commit) and
/// returns the jobs' creation time with their entries.
pub async fn enqueue_batch(
    pool: &PgPool,
    jobs: &[NewJob],
) -> std::result::Result<Batch, BatchError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| BatchError::Failed(e.into()))?;
    let ids: Vec<JobId> = jobs.iter().map(|_| JobId::new()).collect();
    match insert(&mut conn, jobs, ids.clone()).await {
        Ok((enqueued, created_at)) => Ok(Batch {
            // No jobs, no creation time to tell: any will do.
            created_at: created_at.unwrap_or_else(Utc::now),
            enqueued,
        }),
        Err(QueueError::Database(error)) => Err(BatchError::Statement { error, ids }),
        Err(error) => Err(BatchError::Failed(error)),
    }
}
