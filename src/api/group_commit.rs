//! Group commit: concurrent submissions share one INSERT.
//!
//! A commit costs a WAL flush, and a NOTIFY makes it take a database-wide
//! lock, so one INSERT per request caps the API far below what Postgres can
//! write. Requests hand their validated job to one gatherer task and await
//! their own answer. The gatherer takes the first job, waits up to
//! `group_commit_window` (2 ms) for more, up to `group_commit_max_batch`,
//! and hands the batch to a flush: one [`queue::enqueue_batch`] statement
//! that is its own transaction (one round trip), one NOTIFY. While all
//! `group_commit_flushes` flushes are busy, the next batch keeps filling, so
//! batches grow with load instead of queueing up.
//!
//! Each request still gets its own job id, its own idempotency result and
//! its own error: jobs are validated before they join a batch, and if the
//! batch statement fails anyway, each job is retried alone so that only the
//! culprit fails. A batch that fails because the database is unreachable
//! answers 503 to all its requests at once instead.
//!
//! A statement that fails with a lost connection has an unknown outcome:
//! the server may have committed and only the answer was lost (a restart, a
//! failover, a terminated backend, a synchronous standby given up on). The
//! flush does not guess: it asks, on a new connection, which of the jobs it
//! tried to insert exist (their ids are made here), and answers 202 for
//! those and 503 for the rest. A client that retries a 503 with its
//! idempotency key then finds its job either way.

use super::error::ApiError;
use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, is_transient, BatchError, Enqueued, NewJob, QueueError};
use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::collections::HashMap;
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
/// Attempts, and the pause between them, to learn a lost commit's outcome
/// before answering 503.
const RESOLVE_ATTEMPTS: u32 = 5;
const RESOLVE_PAUSE: Duration = Duration::from_millis(200);
/// Longest one attempt may take (a server that does not answer at all).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an insert failed.
enum InsertError {
    /// The statement failed, or was never sent: nothing was written.
    Failed(QueueError),
    /// The statement was sent but its answer was lost: the jobs, with these
    /// ids, were stored if, and only if, the server committed.
    Ambiguous { error: sqlx::Error, ids: Vec<JobId> },
}

/// What happened to one submitted job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The job's id (the one stored first, for a replayed idempotency key).
    pub id: JobId,
    /// False when the idempotency key named an earlier job: `id` is that one.
    pub inserted: bool,
    /// True when that earlier job was another request's (the key was
    /// reused for a different body): the caller must refuse.
    pub key_reused: bool,
    /// The job's `created_at` when it was inserted now.
    pub created_at: DateTime<Utc>,
}

/// Settings of the gatherer.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    /// How long a batch stays open for more submissions.
    pub window: Duration,
    /// Most submissions in one batch.
    pub max_batch: usize,
    /// Most batches being written at once; while all are busy, the next
    /// batch keeps filling.
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
    /// When the request handed its job over.
    since: Instant,
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
            .send(Pending {
                job,
                reply,
                since: Instant::now(),
            })
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
    let started = Instant::now();
    let stage = |name: &str| metrics().submit_stage.with_label_values(&[name]);
    let waited = stage("enqueue_wait");
    for p in &batch {
        waited.observe(started.duration_since(p.since).as_secs_f64());
    }
    let (jobs, replies): (Vec<NewJob>, Vec<_>) =
        batch.into_iter().map(|p| (p.job, p.reply)).unzip();
    let inserted = insert(&pool, &jobs, &stats).await;
    // Every request of the batch waited for its insert and commit.
    let flushed = stage("enqueue_flush");
    let took = started.elapsed().as_secs_f64();
    for _ in &jobs {
        flushed.observe(took);
    }
    match inserted {
        Ok((created_at, results)) => {
            for ((job, reply), entry) in jobs.iter().zip(replies).zip(results) {
                let result = match entry {
                    Some(enqueued) => Ok(answer(job, enqueued, created_at)),
                    // Its key was taken where the statement could not see:
                    // alone, it finds that key's job.
                    None => alone(&pool, job, &stats).await,
                };
                let _ = reply.send(result);
            }
        }
        Err(InsertError::Ambiguous { error, ids }) => {
            let answers = resolve(&pool, &jobs, &ids, &error).await;
            for (reply, result) in replies.into_iter().zip(answers) {
                let _ = reply.send(result);
            }
        }
        Err(InsertError::Failed(QueueError::Database(error)))
            if ApiError::is_unavailable(&error) =>
        {
            tracing::warn!(%error, jobs = jobs.len(), "database unavailable for a batch");
            for reply in replies {
                let _ = reply.send(Err(ApiError::Unavailable("database unavailable")));
            }
        }
        Err(InsertError::Failed(error)) => {
            // Someone's job broke the batch: find whose, one job at a time.
            tracing::warn!(%error, jobs = jobs.len(), "batch insert failed; retrying jobs one by one");
            for (job, reply) in jobs.iter().zip(replies) {
                let _ = reply.send(alone(&pool, job, &stats).await);
            }
        }
    }
}

/// `job` enqueued by a statement of its own.
async fn alone(pool: &PgPool, job: &NewJob, stats: &Stats) -> Result<Submitted, ApiError> {
    match insert(pool, std::slice::from_ref(job), stats).await {
        Ok((created_at, mut one)) => match one.remove(0) {
            Some(enqueued) => Ok(answer(job, enqueued, created_at)),
            // Taken again by a transaction that has not committed: it
            // rolled back, or commits after this statement began.
            None => Err(queue::held_by_rolled_back(job).into()),
        },
        Err(InsertError::Failed(error)) => Err(ApiError::from(error)),
        Err(InsertError::Ambiguous { error, ids }) => {
            let one = std::slice::from_ref(job);
            resolve(pool, one, &ids, &error).await.remove(0)
        }
    }
}

/// The answers of a batch whose statement's outcome is unknown: the jobs
/// that exist under the ids they were given were committed (202); the
/// others were not, or cannot be told apart from that while the database
/// is away (503). (A job whose idempotency key named an earlier job was
/// given an id that is not stored: the client's retry with its key finds
/// the earlier job.)
async fn resolve(
    pool: &PgPool,
    jobs: &[NewJob],
    ids: &[JobId],
    error: &sqlx::Error,
) -> Vec<Result<Submitted, ApiError>> {
    let stored = stored_among(pool, ids).await;
    let known = stored.is_some();
    let stored: HashMap<JobId, DateTime<Utc>> = stored.unwrap_or_default().into_iter().collect();
    tracing::warn!(
        %error,
        jobs = ids.len(),
        stored = stored.len(),
        known,
        "statement outcome was unknown; resolved from the database"
    );
    jobs.iter()
        .zip(ids)
        .map(|(job, id)| match stored.get(id) {
            Some(&created_at) => {
                let enqueued = Enqueued {
                    id: *id,
                    inserted: true,
                    key_reused: false,
                };
                Ok(answer(job, enqueued, created_at))
            }
            None => Err(ApiError::Unavailable(
                "database unavailable; the job was not stored",
            )),
        })
        .collect()
}

/// Which of `ids` exist (live or finished), asked on a new connection;
/// `None` if the database cannot be asked within a few attempts.
async fn stored_among(pool: &PgPool, ids: &[JobId]) -> Option<Vec<(JobId, DateTime<Utc>)>> {
    if ids.is_empty() {
        return Some(Vec::new());
    }
    let options = pool.connect_options();
    for attempt in 1..=RESOLVE_ATTEMPTS {
        // Not a pooled connection: those may be as dead as the one that
        // lost the commit.
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            let mut conn = options.connect().await?;
            let found = queue::read::stored(&mut conn, ids).await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(found)
        })
        .await;
        match found {
            Ok(Ok(found)) => return Some(found),
            Ok(Err(error)) => {
                tracing::debug!(%error, attempt, "cannot learn a lost commit's outcome yet");
                tokio::time::sleep(RESOLVE_PAUSE).await;
            }
            Err(_) => {
                tracing::debug!(
                    attempt,
                    "cannot learn a lost commit's outcome yet: timed out"
                )
            }
        }
    }
    None
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
        key_reused: enqueued.key_reused,
        created_at,
    }
}

/// One enqueue statement, its own transaction: its time (the inserted
/// jobs' `created_at`) and each job's entry; retried on deadlock.
async fn insert(
    pool: &PgPool,
    jobs: &[NewJob],
    stats: &Stats,
) -> Result<(DateTime<Utc>, Vec<Option<Enqueued>>), InsertError> {
    let mut tries = 0;
    loop {
        stats.statements.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match try_insert(pool, jobs).await {
            Err(InsertError::Failed(QueueError::Database(e)))
                if is_transient(&e) && tries < TRANSIENT_RETRIES =>
            {
                tries += 1
            }
            other => return other,
        }
    }
}

async fn try_insert(
    pool: &PgPool,
    jobs: &[NewJob],
) -> Result<(DateTime<Utc>, Vec<Option<Enqueued>>), InsertError> {
    match queue::enqueue_batch(pool, jobs).await {
        Ok(batch) => Ok((batch.created_at, batch.enqueued)),
        Err(BatchError::Failed(e)) => Err(InsertError::Failed(e)),
        // The connection went away with the statement in flight (maybe
        // while the server was committing).
        Err(BatchError::Statement { error, ids }) if ApiError::is_unavailable(&error) => {
            Err(InsertError::Ambiguous { error, ids })
        }
        // The server answered: it did not commit.
        Err(BatchError::Statement { error, .. }) => Err(InsertError::Failed(error.into())),
    }
}
