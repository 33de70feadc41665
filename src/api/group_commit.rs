//! Group commit: concurrent submissions share one INSERT.
//!
//! A commit costs a WAL flush, and a NOTIFY makes it take a database-wide
//! lock, so one INSERT per request caps the API far below what Postgres can
//! write. Requests hand their validated job to one gatherer task and await
//! their own answer. The gatherer takes the first job, waits up to
//! `group_commit_window` (2 ms) for more, up to `group_commit_max_batch`,
//! and hands the batch to a flush: one transaction, one
//! [`queue::enqueue_many`] statement, one NOTIFY. While all
//! `group_commit_flushes` flushes are busy, the next batch keeps filling, so
//! batches grow with load instead of queueing up.
//!
//! Each request still gets its own job id, its own idempotency result and
//! its own error: jobs are validated before they join a batch, and if the
//! batch statement fails anyway, each job is retried alone so that only the
//! culprit fails. A batch that fails because the database is unreachable
//! answers 503 to all its requests at once instead.

use super::error::ApiError;
use super::sql;
use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, is_transient, Enqueued, NewJob, QueueError};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Submissions waiting for the gatherer before `submit` itself waits.
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Times a batch is retried after a deadlock or serialization failure.
const TRANSIENT_RETRIES: usize = 3;

/// What happened to one submitted job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub id: JobId,
    /// False when the idempotency key named an earlier job: `id` is that one.
    pub inserted: bool,
    /// The job's `created_at` when it was inserted now.
    pub created_at: DateTime<Utc>,
}

/// Settings of the gatherer.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    pub window: Duration,
    pub max_batch: usize,
    pub flushes: usize,
}

/// Counters, for tests and tuning.
#[derive(Debug, Default)]
struct Stats {
    /// INSERT statements run (batches, plus single-job retries).
    statements: AtomicU64,
    /// Jobs those statements carried.
    jobs: AtomicU64,
}

struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<Submitted, ApiError>>,
}

/// The handle requests submit through.
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
}

impl GroupCommit {
    /// Starts the gatherer. On `stop` it stops taking submissions, writes
    /// those it has, waits for its flushes and ends.
    pub fn spawn(
        pool: PgPool,
        config: GroupCommitConfig,
        stop: CancellationToken,
    ) -> (GroupCommit, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(gather(pool, rx, config, stats.clone(), stop));
        (GroupCommit { tx, stats }, task)
    }

    /// Enqueues `job` with whatever else is being submitted right now.
    pub async fn submit(&self, job: NewJob) -> Result<Submitted, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { job, reply })
            .await
            .map_err(|_| ApiError::Unavailable("shutting down"))?;
        // The flush answers every job it took; a dropped sender means the
        // flush task died (a panic), which the log shows.
        answer
            .await
            .map_err(|_| ApiError::Internal("group commit flush ended without an answer".into()))?
    }

    /// INSERT statements run so far.
    pub fn statements(&self) -> u64 {
        self.stats.statements.load(Ordering::Relaxed)
    }

    /// Jobs submitted through those statements.
    pub fn jobs(&self) -> u64 {
        self.stats.jobs.load(Ordering::Relaxed)
    }
}

async fn gather(
    pool: PgPool,
    mut rx: mpsc::Receiver<Pending>,
    config: GroupCommitConfig,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let flushes = Arc::new(Semaphore::new(config.flushes));
    let mut closed = false;
    loop {
        let first = tokio::select! {
            biased;
            // Shutting down: take no new submissions, drain those buffered.
            _ = stop.cancelled(), if !closed => {
                rx.close();
                closed = true;
                continue;
            }
            // The first job of the next batch.
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + config.window;
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(item) => {
                    batch.push(item);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if config.window.is_zero() => break,
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                // Another job joins the batch.
                item = rx.recv() => match item {
                    Some(item) => batch.push(item),
                    None => break,
                },
                // The first job has waited long enough.
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let permit = acquire_filling(&flushes, &mut rx, &mut batch, config.max_batch).await;
        tokio::spawn(flush(pool.clone(), batch, stats.clone(), permit));
    }
    // Wait for the flushes still writing.
    let _ = flushes.acquire_many(config.flushes as u32).await;
    let statements = stats.statements.load(Ordering::Relaxed);
    let jobs = stats.jobs.load(Ordering::Relaxed);
    tracing::info!(
        statements,
        jobs,
        jobs_per_statement = jobs as f64 / statements.max(1) as f64,
        "group commit stopped"
    );
}

/// Waits for a free flush, adding arriving jobs to `batch` meanwhile.
async fn acquire_filling(
    flushes: &Arc<Semaphore>,
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    max_batch: usize,
) -> OwnedSemaphorePermit {
    // The semaphore is never closed.
    let closed = "flush semaphore is never closed";
    loop {
        if batch.len() >= max_batch {
            return flushes.clone().acquire_owned().await.expect(closed);
        }
        tokio::select! {
            biased;
            // A flush is free: go.
            permit = flushes.clone().acquire_owned() => return permit.expect(closed),
            // All flushes busy: let the batch grow.
            item = rx.recv() => match item {
                Some(item) => batch.push(item),
                None => return flushes.clone().acquire_owned().await.expect(closed),
            },
        }
    }
}

async fn flush(
    pool: PgPool,
    batch: Vec<Pending>,
    stats: Arc<Stats>,
    _permit: OwnedSemaphorePermit,
) {
    let (jobs, replies): (Vec<NewJob>, Vec<_>) =
        batch.into_iter().map(|p| (p.job, p.reply)).unzip();
    match insert(&pool, &jobs, &stats).await {
        Ok((created_at, results)) => {
            for ((job, reply), enqueued) in jobs.iter().zip(replies).zip(results) {
                let _ = reply.send(Ok(answer(job, enqueued, created_at)));
            }
        }
        Err(QueueError::Database(error)) if ApiError::is_unavailable(&error) => {
            tracing::warn!(%error, jobs = jobs.len(), "database unavailable for a batch");
            for reply in replies {
                let _ = reply.send(Err(ApiError::Unavailable("database unavailable")));
            }
        }
        Err(error) => {
            // Someone's job broke the batch: find whose, one job at a time.
            tracing::warn!(%error, jobs = jobs.len(), "batch insert failed; retrying jobs one by one");
            for (job, reply) in jobs.iter().zip(replies) {
                let result = insert(&pool, std::slice::from_ref(job), &stats)
                    .await
                    .map(|(created_at, mut one)| answer(job, one.remove(0), created_at))
                    .map_err(ApiError::from);
                let _ = reply.send(result);
            }
        }
    }
}

fn answer(job: &NewJob, enqueued: Enqueued, created_at: DateTime<Utc>) -> Submitted {
    if enqueued.inserted {
        metrics()
            .jobs_enqueued
            .with_label_values(&[&job.priority.get().to_string()])
            .inc();
    }
    Submitted {
        id: enqueued.id,
        inserted: enqueued.inserted,
        created_at,
    }
}

/// One transaction: its start time (the inserted jobs' `created_at`) and
/// one enqueue statement; retried on deadlock.
async fn insert(
    pool: &PgPool,
    jobs: &[NewJob],
    stats: &Stats,
) -> Result<(DateTime<Utc>, Vec<Enqueued>), QueueError> {
    let mut tries = 0;
    loop {
        stats.statements.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match try_insert(pool, jobs).await {
            Err(QueueError::Database(e)) if is_transient(&e) && tries < TRANSIENT_RETRIES => {
                tries += 1
            }
            other => return other,
        }
    }
}

async fn try_insert(
    pool: &PgPool,
    jobs: &[NewJob],
) -> Result<(DateTime<Utc>, Vec<Enqueued>), QueueError> {
    let mut tx = pool.begin().await?;
    let created_at: DateTime<Utc> = sqlx::query_scalar(sql::TRANSACTION_TIME)
        .fetch_one(&mut *tx)
        .await?;
    let enqueued = queue::enqueue_many(&mut tx, jobs).await?;
    tx.commit().await?;
    Ok((created_at, enqueued))
}
