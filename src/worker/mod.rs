//! The worker runtime: claims jobs, runs their handlers, writes outcomes.
//!
//! Roles, one task each (after River's producer / executor / completer):
//! - `producer`: the claim loop. Never claims more jobs than the worker has
//!   free slots; sleeps until a NOTIFY, a freed slot or the jittered poll.
//! - `executor`: runs one attempt of one job under a slot.
//! - `completer`: writes outcomes, batching whatever has piled up while
//!   the previous batch was being written into one transaction.
//! - `heartbeat`: extends all running leases in one statement every
//!   lease/3, and cancels the jobs whose lease was lost.
//! - the listener ([`crate::queue::notify`]): a NOTIFY on `skipjack_jobs`
//!   wakes the producer; one on `skipjack_cancel` (the job was cancelled
//!   while running) stops that job's attempt at once: its handler's future
//!   is dropped and nothing is written for it.
//! - maintenance ([`crate::queue::maintenance`]): rescue and housekeeping.
//!
//! Shutdown has two phases: stop claiming and let running jobs finish within
//! the grace period; then cancel the rest and release their leases so
//! another worker takes them at once.

mod completer;
pub mod config;
mod executor;
pub mod handler;
mod heartbeat;
mod noop;
mod producer;
pub mod ready;

pub use config::{default_worker_id, pool_size, WorkerArgs, WorkerConfig};
pub use handler::{FinishedJob, Handler, JobContext};
pub use noop::NoopHandler;
pub use ready::claiming_check;

/// What executors send the completer.
enum Done {
    /// An attempt ended: write its outcome.
    Finished(FinishedJob),
    /// Abandoned at shutdown: give the lease back.
    Release(crate::queue::AttemptId),
}

use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, gauges::GaugesConfig, notify, AttemptId};
use handler::DynHandler;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No job kind has a handler.
    #[error("no handler registered")]
    NoHandlers,
    /// A concurrency of 0.
    #[error("concurrency must be at least 1")]
    NoConcurrency,
    /// From the queue.
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
}

/// A job being run, as the heartbeat, the cancel listener and shutdown see
/// it.
struct Running {
    /// Cancelled on lease loss, on a cancel of the job, or at the end of the
    /// grace period.
    cancel: CancellationToken,
    /// Set (before `cancel` is cancelled) when the job was cancelled through
    /// the queue ([`queue::CANCEL_CHANNEL`]): the attempt counts as
    /// cancelled, not as a lost lease.
    cancelled: Arc<AtomicBool>,
}

/// State shared by the worker's tasks.
struct Shared {
    pool: PgPool,
    /// LISTEN, maintenance and the gauges' leadership lock: session state
    /// that transaction pooling would break (see `db::connect_direct`).
    direct_pool: PgPool,
    /// Claims and heartbeats go through this pool, whose sessions commit
    /// asynchronously (`synchronous_commit = off`): they do not wait for the
    /// WAL flush, which is most of a one-job claim's latency. Safe because
    /// every finish is fenced: a claim or heartbeat lost in a database crash
    /// only means the job runs again (at least once, as after any lost
    /// lease), and a later durable commit (the job's finish) flushes the WAL
    /// that holds the claim before it. Enqueues and finishes stay durable.
    lease_pool: PgPool,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn DynHandler>>,
    /// Kinds with a handler: the claim takes only these.
    kinds: Vec<String>,
    /// One permit per job slot; the producer takes one per claimed job.
    slots: Arc<Semaphore>,
    /// Attempts claimed and not yet written (running, or finished and
    /// waiting for the completer): the heartbeat keeps their leases. Keyed
    /// by attempt, so that a job claimed again by this worker after a lost
    /// lease is a separate entry that the old attempt can neither cancel
    /// nor remove.
    running: Mutex<HashMap<AttemptId, Running>>,
    /// Rung by the listener (NOTIFY or reconnect) to make the producer claim.
    wake: Notify,
    /// Listener reconnects so far: after one, the producer registers as a
    /// waiter again (a crash empties the unlogged `queue_waiters`).
    listener_epoch: AtomicU64,
    /// Rung by executors when they give back a slot.
    slot_freed: Notify,
    /// Cancelled when shutdown's grace period is over.
    hard_stop: CancellationToken,
    /// Claim statements run, to check that wake-ups stay cheap.
    claims: AtomicU64,
    /// Claim statements that failed (the database away).
    failed_claims: AtomicU64,
}

impl Shared {
    fn running_attempts(&self) -> Vec<AttemptId> {
        self.lock_running().keys().copied().collect()
    }

    /// Drops attempts from the running set: written, released, or lost.
    fn forget(&self, attempts: impl IntoIterator<Item = AttemptId>) {
        let mut running = self.lock_running();
        for attempt in attempts {
            running.remove(&attempt);
        }
    }

    /// Stops every attempt of `job` this worker runs, because the job was
    /// cancelled (its row is gone): the handler's future is dropped at once
    /// and nothing is written for it. Returns the attempts stopped; a job
    /// this worker does not run stops nothing.
    fn cancel_job(&self, job: JobId) -> usize {
        let running = self.lock_running();
        let mut stopped = 0;
        for (attempt, run) in running.iter() {
            if attempt.job == job && !run.cancelled.swap(true, Ordering::SeqCst) {
                run.cancel.cancel();
                stopped += 1;
            }
        }
        stopped
    }

    /// True when `attempt` was stopped by a cancel of its job.
    fn cancel_requested(&self, attempt: AttemptId) -> bool {
        self.lock_running()
            .get(&attempt)
            .is_some_and(|run| run.cancelled.load(Ordering::SeqCst))
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptId, Running>> {
        // A panic while holding this lock leaves the map usable: recover it.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A configured worker; [`Worker::run`] runs it until shutdown.
pub struct Worker {
    shared: Arc<Shared>,
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    pool: PgPool,
    direct_pool: PgPool,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn DynHandler>>,
}

impl WorkerBuilder {
    /// The pool for LISTEN, maintenance and the gauges' leadership: a
    /// direct connection when the main pool goes through PgBouncer in
    /// transaction mode. Default: the main pool.
    pub fn direct_pool(mut self, pool: PgPool) -> Self {
        self.direct_pool = pool;
        self
    }

    /// With `config` instead of the defaults.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds the handler for its kind (replacing any earlier one).
    pub fn register<H: Handler>(mut self, handler: H) -> Self {
        self.handlers
            .insert(handler.kind().to_owned(), Arc::new(handler));
        self
    }

    /// The worker, or why it cannot run.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        if self.config.concurrency == 0 {
            return Err(WorkerError::NoConcurrency);
        }
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        let lease_options = (*self.pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let lease_pool = PgPoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(lease_options);
        Ok(Worker {
            shared: Arc::new(Shared {
                lease_pool,
                slots: Arc::new(Semaphore::new(self.config.concurrency)),
                pool: self.pool,
                direct_pool: self.direct_pool,
                config: self.config,
                handlers: self.handlers,
                kinds,
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                listener_epoch: AtomicU64::new(0),
                slot_freed: Notify::new(),
                hard_stop: CancellationToken::new(),
                claims: AtomicU64::new(0),
                failed_claims: AtomicU64::new(0),
            }),
        })
    }
}

/// Handles a NOTIFY on [`queue::CANCEL_CHANNEL`]: stops the attempt of the
/// named job if this worker runs it; anything else is ignored.
fn on_cancel(shared: &Shared, payload: &str) {
    let Ok(id) = payload.trim().parse::<uuid::Uuid>() else {
        tracing::debug!(payload, "ignored a cancel notification that names no job");
        return;
    };
    let stopped = shared.cancel_job(JobId(id));
    if stopped > 0 {
        tracing::info!(job_id = %id, "job cancelled; stopping its attempt");
    }
}

/// What [`Worker::run_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOnce {
    /// Jobs claimed.
    pub claimed: usize,
    /// Jobs completed.
    pub completed: usize,
    /// Attempts retried.
    pub retried: usize,
    /// Jobs failed for good.
    pub failed: usize,
    /// Outcomes discarded because the lease had been lost.
    pub lease_lost: usize,
    /// Attempts stopped because their job was cancelled.
    pub cancelled: usize,
}

impl Worker {
    /// A builder for a worker on `pool`.
    pub fn builder(pool: PgPool) -> WorkerBuilder {
        WorkerBuilder {
            direct_pool: pool.clone(),
            pool,
            config: WorkerConfig::default(),
            handlers: HashMap::new(),
        }
    }

    /// The worker's id (its lease owner name).
    pub fn id(&self) -> &str {
        &self.shared.config.id
    }

    /// Claim statements this worker has run.
    pub fn claims(&self) -> u64 {
        self.shared.claims.load(Ordering::Relaxed)
    }

    /// Claim statements of this worker that failed.
    pub fn failed_claims(&self) -> u64 {
        self.shared.failed_claims.load(Ordering::Relaxed)
    }

    /// Runs until `shutdown` is cancelled, then drains: running jobs get
    /// `shutdown_grace` to finish, the rest are cancelled and released.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let shared = &self.shared;
        let concurrency = shared.config.concurrency;
        metrics().worker_slots_total.set(concurrency as i64);
        let background = CancellationToken::new();

        let listener = {
            let waker = shared.clone();
            notify::spawn_listener(
                shared.direct_pool.clone(),
                vec![queue::JOBS_CHANNEL, queue::CANCEL_CHANNEL],
                move |wakeup| {
                    if let notify::Wakeup::Notification { channel, payload } = &wakeup {
                        if channel == queue::CANCEL_CHANNEL {
                            on_cancel(&waker, payload);
                            return;
                        }
                    }
                    if wakeup == notify::Wakeup::Reconnected {
                        metrics().listener_reconnects.inc();
                        waker.listener_epoch.fetch_add(1, Ordering::SeqCst);
                    }
                    waker.wake.notify_one();
                },
                background.clone(),
            )
        };
        let heartbeat = tokio::spawn(heartbeat::run(shared.clone(), background.clone()));
        let schema = shared.config.schema;
        let maintenance = shared.config.maintenance.clone().map(|config| {
            let config = queue::maintenance::MaintenanceConfig { schema, ..config };
            queue::maintenance::spawn(shared.direct_pool.clone(), config, background.clone())
        });
        let gauges = shared.config.queue_gauges.clone().map(|config| {
            let config = GaugesConfig { schema, ..config };
            queue::gauges::spawn(shared.direct_pool.clone(), config, background.clone())
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(completer::run(shared.clone(), done_rx));

        tracing::info!(worker = %shared.config.id, concurrency, kinds = ?shared.kinds, "worker started");
        producer::run(shared.clone(), done_tx, shutdown.clone()).await;

        // Phase 1: no more claims; running jobs get the grace period.
        let in_flight = concurrency - shared.slots.available_permits();
        tracing::info!(
            in_flight,
            grace_s = shared.config.shutdown_grace.as_secs_f64(),
            "draining"
        );
        let all_slots = concurrency as u32;
        let drained = tokio::time::timeout(
            shared.config.shutdown_grace,
            shared.slots.acquire_many(all_slots),
        )
        .await
        .is_ok();
        if !drained {
            // Phase 2: cancel what is left; executors hand those jobs to the
            // completer for release.
            let left = concurrency - shared.slots.available_permits();
            tracing::warn!(left, "grace period over: releasing unfinished jobs");
            shared.hard_stop.cancel();
            // Executors exit promptly once cancelled.
            let _ = shared.slots.acquire_many(all_slots).await;
        }
        // Every executor is gone, and with them every sender: the completer
        // writes what is left and stops.
        if let Err(error) = completer.await {
            tracing::error!(%error, "completer task failed");
        }
        background.cancel();
        let _ = listener.await;
        let _ = heartbeat.await;
        if let Some(maintenance) = maintenance {
            let _ = maintenance.await;
        }
        if let Some(gauges) = gauges {
            let _ = gauges.await;
        }
        tracing::info!(worker = %shared.config.id, "worker stopped");
        Ok(())
    }

    /// Claims up to `limit` jobs (bounded by the free slots), runs them all
    /// and writes their outcomes before returning: a deterministic step for
    /// tests and tools, with no background task.
    pub async fn run_once(&self, limit: usize) -> Result<RunOnce, WorkerError> {
        let shared = &self.shared;
        let jobs = queue::claim_at(
            &shared.lease_pool,
            &shared.config.id,
            limit.min(shared.slots.available_permits()),
            shared.config.lease,
            &shared.kinds,
            shared.config.schema,
        )
        .await?;
        let mut report = RunOnce {
            claimed: jobs.len(),
            ..Default::default()
        };
        let runs = jobs.into_iter().map(|job| executor::attempt(shared, job));
        let mut finished: Vec<FinishedJob> = Vec::new();
        for attempt in futures_util::future::join_all(runs).await {
            match attempt {
                executor::Attempt::Finished(f) => finished.push(f),
                executor::Attempt::Abandoned(attempt) | executor::Attempt::LeaseLost(attempt) => {
                    shared.forget([attempt]);
                    report.lease_lost += 1
                }
                executor::Attempt::Cancelled(attempt) => {
                    shared.forget([attempt]);
                    report.cancelled += 1
                }
            }
        }
        let written = completer::write_outcomes(shared, &finished).await;
        shared.forget(finished.iter().map(|f| f.job.attempt_id()));
        let states = written?;
        // By the state written, not the outcome sent: an outcome the
        // database rejected was written as a failure.
        for state in states {
            match state {
                None => report.lease_lost += 1,
                Some(queue::JobState::Queued) => report.retried += 1,
                Some(queue::JobState::Completed) => report.completed += 1,
                Some(_) => report.failed += 1,
            }
        }
        Ok(report)
    }
}
