//! What a worker runs: one [`Handler`] per job kind.

use crate::queue::{ClaimedJob, Outcome};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use std::future::Future;
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
}

/// An attempt that ended, with its outcome, as the completer writes it.
#[derive(Clone, Debug)]
pub struct FinishedJob {
    /// The job that ran.
    pub job: ClaimedJob,
    /// What it came to.
    pub outcome: Outcome,
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
    /// worker that lost its lease writes nothing).
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
