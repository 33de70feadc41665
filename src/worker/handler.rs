//! What a worker runs: one [`Handler`] per job kind.

use crate::queue::{ClaimedJob, Outcome};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What a handler gets for one attempt of a job.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job being run.
    pub job: ClaimedJob,
    /// Cancelled when the job was cancelled (`DELETE /v1/chat/{id}`), when
    /// the worker lost the job's lease (another worker may be running it
    /// now) or when shutdown's grace period is over. The worker
    /// drops the handler's future either way; long handlers may also watch
    /// it to stop cleanly.
    pub cancel: CancellationToken,
    /// What [`JobContext::keep`] was given, taken by the worker when the
    /// attempt ends.
    pub(crate) kept: Slot,
}

/// The value an attempt hands from [`Handler::handle`] to
/// [`Handler::on_completed`].
pub(crate) type Slot = Arc<Mutex<Option<Kept>>>;
type Kept = Arc<dyn Any + Send + Sync>;

impl JobContext {
    /// A context for `job`.
    pub fn new(job: ClaimedJob, cancel: CancellationToken) -> Self {
        JobContext {
            job,
            cancel,
            kept: Slot::default(),
        }
    }

    /// Hands `value` to this attempt's completion: [`FinishedJob::kept`]
    /// returns it in [`Handler::on_completed`], so what the attempt worked
    /// out (a parsed payload, the history it read) need not be worked out
    /// again. A later call replaces the value. It lives as long as the
    /// attempt's outcome and is never stored.
    pub fn keep<T: Any + Send + Sync>(&self, value: T) {
        *lock(&self.kept) = Some(Arc::new(value));
    }

    /// What the attempt kept, taken out for its [`FinishedJob`].
    pub(crate) fn take_kept(&self) -> Option<Kept> {
        lock(&self.kept).take()
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Kept>> {
    // A plain value: usable after a panic elsewhere.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// An attempt that ended, with its outcome, as the completer writes it.
#[derive(Clone)]
pub struct FinishedJob {
    /// The job that ran.
    pub job: ClaimedJob,
    /// What it came to.
    pub outcome: Outcome,
    /// What the attempt handed over with [`JobContext::keep`].
    pub(crate) kept: Option<Kept>,
}

impl FinishedJob {
    /// An attempt of `job` that came to `outcome` and kept nothing.
    pub fn new(job: ClaimedJob, outcome: Outcome) -> Self {
        FinishedJob {
            job,
            outcome,
            kept: None,
        }
    }

    /// The value the attempt handed over with [`JobContext::keep`], if it
    /// was a `T`.
    pub fn kept<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.kept.as_deref()?.downcast_ref()
    }
}

impl fmt::Debug for FinishedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishedJob")
            .field("job", &self.job)
            .field("outcome", &self.outcome)
            .field("kept", &self.kept.is_some())
            .finish()
    }
}

/// Runs the jobs of one kind.
pub trait Handler: Send + Sync + 'static {
    /// The job kind this handler serves.
    fn kind(&self) -> &str;

    /// Runs one attempt. Never hold a database transaction or row lock
    /// across the slow part of the work.
    fn handle(&self, ctx: JobContext) -> impl Future<Output = Outcome> + Send;

    /// Called inside the transaction that completes a batch of this kind's
    /// jobs, with only the jobs whose completion passed the lease fence:
    /// writes here commit together with the completion, or not at all (a
    /// worker that lost its lease writes nothing). The transaction's
    /// statements use their generic plans (`plan_cache_mode =
    /// force_generic_plan`, local to it): write them to reach tables by key.
    fn on_completed<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        _jobs: &'a [&'a FinishedJob],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
        async { Ok(()) }
    }
}

/// The object-safe form of [`Handler`], so handlers of different types can
/// share one registry.
pub(crate) trait DynHandler: Send + Sync {
    fn handle_boxed(&self, ctx: JobContext) -> BoxFuture<'_, Outcome>;
    fn on_completed_boxed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

impl<H: Handler> DynHandler for H {
    fn handle_boxed(&self, ctx: JobContext) -> BoxFuture<'_, Outcome> {
        Box::pin(Handler::handle(self, ctx))
    }

    fn on_completed_boxed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(Handler::on_completed(self, tx, jobs))
    }
}
