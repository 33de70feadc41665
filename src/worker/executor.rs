//! The executor: runs one attempt of one job.

use super::{Done, FinishedJob, JobContext, Running, Shared};
use crate::metrics::{metrics, observe_since};
use crate::queue::{AttemptId, ClaimedJob, Outcome};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

/// How an attempt ended, from the worker's side.
pub(super) enum Attempt {
    /// The handler returned (or panicked, which counts as a retryable error).
    /// The attempt stays in the running set, its lease extended, until the
    /// completer has written the outcome.
    Finished(FinishedJob),
    /// Cancelled at the end of the shutdown grace period: release the lease
    /// (the attempt stays in the running set until then).
    Abandoned(AttemptId),
    /// Cancelled because the lease was lost: nothing to write (the attempt
    /// has left the running set).
    LeaseLost(AttemptId),
    /// Stopped because the job was cancelled (its row is gone): nothing to
    /// write or release (the attempt has left the running set).
    Cancelled(AttemptId),
}

/// Runs `job` in its own task under `permit`, and hands the result to the
/// completer before giving the slot back.
pub(super) fn spawn(
    shared: Arc<Shared>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<Done>,
) {
    metrics().worker_slots_busy.inc();
    tokio::spawn(async move {
        let message = match attempt(&shared, job).await {
            Attempt::Finished(finished) => Some(Done::Finished(finished)),
            Attempt::Abandoned(attempt) => Some(Done::Release(attempt)),
            Attempt::Cancelled(attempt) => {
                metrics().worker_jobs_cancelled.inc();
                tracing::info!(job_id = %attempt.job, attempt = attempt.attempt, "job cancelled while running; stopped the job");
                None
            }
            Attempt::LeaseLost(attempt) => {
                metrics().jobs_lease_lost.inc();
                tracing::warn!(job_id = %attempt.job, attempt = attempt.attempt, "lease lost while running; stopped the job");
                None
            }
        };
        if let Some(message) = message {
            // The completer outlives every executor (shutdown waits for all
            // slots before closing it), so this send cannot fail.
            let _ = done.send(message);
        }
        drop(permit);
        metrics().worker_slots_busy.dec();
        shared.slot_freed.notify_one();
    });
}

/// Runs one attempt of `job` to its end, its cancellation or a panic, in a
/// `job` span that puts the job, its conversation, tenant, attempt and
/// worker on every log line written meanwhile (the handler's included).
pub(super) async fn attempt(shared: &Shared, job: ClaimedJob) -> Attempt {
    let span = job_span(&shared.config.id, &job);
    attempt_in_span(shared, job).instrument(span).await
}

/// The span of one attempt. Ids are fields of log lines, never metric
/// labels.
pub(super) fn job_span(worker: &str, job: &ClaimedJob) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        kind = %job.kind,
        attempt = job.attempt,
        priority = job.priority.get(),
        worker = %worker,
        tenant_id = tracing::field::Empty,
        conversation_id = tracing::field::Empty,
    );
    if let Some(tenant) = job.tenant_id {
        span.record("tenant_id", tracing::field::display(tenant));
    }
    if let Some(conversation) = job.conversation_id {
        span.record("conversation_id", tracing::field::display(conversation));
    }
    span
}

async fn attempt_in_span(shared: &Shared, job: ClaimedJob) -> Attempt {
    let cancel = shared.hard_stop.child_token();
    let cancelled = Arc::new(AtomicBool::new(false));
    let attempt_id = job.attempt_id();
    shared.lock_running().insert(
        attempt_id,
        Running {
            cancel: cancel.clone(),
            cancelled: cancelled.clone(),
        },
    );
    if job.attempt == 1 {
        if let Some(started) = job.started_at {
            let wait = (started - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics()
                .job_wait
                .with_label_values(&[&job.priority.get().to_string()])
                .observe(wait.max(0.0));
        }
    }
    let started = chrono::Utc::now();
    let mut kept = None;
    let outcome = match shared.handlers.get(&job.kind) {
        // The claim only takes kinds that have a handler.
        None => Some(Outcome::Failed {
            error: format!("no handler for kind {:?}", job.kind),
        }),
        Some(handler) => {
            let ctx = JobContext::new(job.clone(), cancel.clone());
            let run = AssertUnwindSafe(handler.handle_boxed(ctx.clone())).catch_unwind();
            let outcome = tokio::select! {
                biased;
                // Job cancelled, lease lost or grace period over: drop the
                // handler's future (and with it any call it was making).
                _ = cancel.cancelled() => None,
                result = run => Some(result.unwrap_or_else(|panic| Outcome::Retry {
                    error: format!("handler panicked: {}", panic_message(&panic)),
                    retry_after: None,
                })),
            };
            kept = ctx.take_kept();
            outcome
        }
    };
    observe_since(
        &metrics().job_run.with_label_values(&[job.kind.as_str()]),
        started,
    );
    tracing::debug!(
        outcome = match &outcome {
            Some(Outcome::Completed { .. }) => "completed",
            Some(Outcome::Retry { .. }) => "retry",
            Some(Outcome::Failed { .. }) => "failed",
            Some(Outcome::Snooze { .. }) => "snoozed",
            None if cancelled.load(Ordering::SeqCst) => "cancelled",
            None => "stopped",
        },
        run_s = (chrono::Utc::now() - started).num_milliseconds() as f64 / 1e3,
        "attempt finished"
    );
    match outcome {
        // Text Postgres cannot store never reaches the completer's batch.
        Some(outcome) => Attempt::Finished(FinishedJob {
            job,
            outcome: outcome.without_nul(),
            kept,
        }),
        // The job's row is gone: nothing to release or write.
        None if cancelled.load(Ordering::SeqCst) => {
            shared.forget([attempt_id]);
            Attempt::Cancelled(attempt_id)
        }
        None if shared.hard_stop.is_cancelled() => Attempt::Abandoned(attempt_id),
        None => {
            shared.forget([attempt_id]);
            Attempt::LeaseLost(attempt_id)
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
