//! The completer: writes outcomes in batches.
//!
//! It takes everything that piled up while it wrote the previous batch, so
//! at low load every outcome is written at once, alone, and under load they
//! are written up to a thousand to a transaction, a few transactions at once.
//!
//! An attempt stays in the worker's running set (and so keeps its lease,
//! extended by the heartbeat) until its outcome is written: a backlog here
//! or a slow database never throws away finished work. Two kinds of write
//! failure are told apart (see [`queue::is_rejected`]): a lost connection
//! or a server in trouble is retried as is until the database answers; a
//! batch the database refuses for something in its data is split in halves,
//! then singles, so that only the offending job is affected: it fails with
//! the database's error, and its conversation moves on.

use super::{executor, Done, FinishedJob, Shared};
use crate::metrics::metrics;
use crate::queue::{self, AttemptId, JobState, Outcome, QueueError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// First pause before writing a batch again after a connection or server
/// error; it doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_FIRST: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// Runs until every sender is gone and everything received is written.
///
/// Up to `completer_parallelism` batches are written at once: jobs in
/// different batches never share a conversation (a conversation has one job
/// processing at a time), so concurrent batches touch disjoint rows.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Done>) {
    let max = shared.config.completer_batch.max(1);
    let parallelism = shared.config.completer_parallelism.max(1);
    let mut finished: Vec<FinishedJob> = Vec::new();
    let mut writes = JoinSet::new();
    let mut open = true;
    loop {
        take_waiting(&shared, &mut rx, &mut finished, max, &mut open).await;
        if !finished.is_empty() && writes.len() < parallelism {
            // Jobs woken in the same tick (a claim's jobs, started together,
            // often finish together) may still be about to report: let them
            // run first, so that their outcomes share this batch's
            // transaction instead of each paying for one.
            tokio::task::yield_now().await;
            take_waiting(&shared, &mut rx, &mut finished, max, &mut open).await;
            let batch = std::mem::take(&mut finished);
            let shared = shared.clone();
            writes.spawn(async move {
                // Written or given up: either way the heartbeat has nothing
                // more to keep for these attempts.
                let _ = write_logged(&shared, &batch).await;
                shared.forget(batch.iter().map(|f| f.job.attempt_id()));
            });
            continue;
        }
        if !open && finished.is_empty() && writes.is_empty() {
            return;
        }
        tokio::select! {
            // More outcomes (only while the batch has room).
            received = rx.recv(), if open && finished.len() < max => match received {
                Some(Done::Finished(f)) => finished.push(f),
                Some(Done::Release(attempt)) => release(&shared, attempt).await,
                None => open = false,
            },
            // A write finished: room for the next batch.
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
        }
    }
}

/// Takes whatever outcomes are already waiting, up to a batch of `max`;
/// `open` turns false once every sender is gone.
async fn take_waiting(
    shared: &Shared,
    rx: &mut mpsc::UnboundedReceiver<Done>,
    finished: &mut Vec<FinishedJob>,
    max: usize,
    open: &mut bool,
) {
    while *open && finished.len() < max {
        match rx.try_recv() {
            Ok(Done::Finished(f)) => finished.push(f),
            Ok(Done::Release(attempt)) => release(shared, attempt).await,
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => *open = false,
        }
    }
}

/// Gives back the lease of a job abandoned at shutdown (rare: one at a time).
async fn release(shared: &Shared, attempt: AttemptId) {
    let id = attempt.job;
    match queue::release(&shared.pool, &shared.config.id, &[id]).await {
        Ok(released) => match released.first() {
            Some((_, JobState::Failed)) => {
                tracing::warn!(job_id = %id, "released at shutdown on its last attempt: failed")
            }
            Some(_) => tracing::info!(job_id = %id, "released lease"),
            None => tracing::warn!(job_id = %id, "lease already gone at release"),
        },
        Err(error) => {
            tracing::error!(%error, job_id = %id, "releasing lease failed; it will expire")
        }
    }
    shared.forget([attempt]);
}

/// [`write_outcomes`] in a `complete` span, with a failure logged.
async fn write_logged(
    shared: &Shared,
    finished: &[FinishedJob],
) -> Result<Vec<Option<JobState>>, QueueError> {
    let span = tracing::info_span!("complete", worker = %shared.config.id, jobs = finished.len());
    let result = write_outcomes(shared, finished).instrument(span).await;
    if let Err(error) = &result {
        tracing::error!(
            %error,
            jobs = finished.len(),
            "writing outcomes failed; the leases will expire and the jobs run again"
        );
    }
    result
}

/// Writes `finished` and returns each job's new state (`None`: the lease
/// was lost), in input order.
///
/// A connection or server error is retried, with a growing pause, until
/// the database answers (the attempts keep their leases meanwhile); when
/// the worker is past its shutdown grace period it stops trying and
/// returns the error. A batch the database rejects is split in halves, then
/// singles; a single outcome it rejects is replaced by a `failed` outcome
/// carrying the database's error.
pub(super) fn write_outcomes<'a>(
    shared: &'a Shared,
    finished: &'a [FinishedJob],
) -> BoxFuture<'a, Result<Vec<Option<JobState>>, QueueError>> {
    Box::pin(async move {
        match write_retrying(shared, finished).await {
            Err(error) if queue::is_rejected(&error) && finished.len() > 1 => {
                tracing::warn!(%error, jobs = finished.len(), "outcomes rejected; splitting the batch");
                let (first, second) = finished.split_at(finished.len() / 2);
                let mut states = write_outcomes(shared, first).await?;
                states.extend(write_outcomes(shared, second).await?);
                Ok(states)
            }
            Err(error) if queue::is_rejected(&error) => {
                let f = &finished[0];
                executor::job_span(&shared.config.id, &f.job).in_scope(
                    || tracing::error!(%error, "outcome rejected by the database; failing the job"),
                );
                let failed = FinishedJob::new(
                    f.job.clone(),
                    Outcome::Failed {
                        error: format!("the outcome could not be stored: {error}"),
                    }
                    .without_nul(),
                );
                write_retrying(shared, std::slice::from_ref(&failed)).await
            }
            other => other,
        }
    })
}

/// [`write`], retried on connection and server errors.
async fn write_retrying(
    shared: &Shared,
    finished: &[FinishedJob],
) -> Result<Vec<Option<JobState>>, QueueError> {
    let mut delay = RETRY_DELAY_FIRST;
    loop {
        match write(shared, finished).await {
            Err(error) if !queue::is_rejected(&error) && !shared.hard_stop.is_cancelled() => {
                tracing::warn!(%error, jobs = finished.len(), retry_in_ms = delay.as_millis() as u64, "writing outcomes failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // Past the grace period: try once more, then give up.
                    _ = shared.hard_stop.cancelled() => {}
                }
                delay = (delay * 2).min(RETRY_DELAY_MAX);
            }
            other => return other,
        }
    }
}

/// Writes `finished` in one transaction, with each kind's completion hook;
/// returns each job's new state (`None`: the lease was lost).
pub(super) async fn write(
    shared: &Shared,
    finished: &[FinishedJob],
) -> Result<Vec<Option<JobState>>, QueueError> {
    if finished.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<queue::FinishItem<'_>> = finished
        .iter()
        .map(|f| queue::FinishItem {
            job: f.job.id,
            attempt: f.job.attempt,
            outcome: &f.outcome,
        })
        .collect();
    let mut tries = 0;
    let states = loop {
        let mut tx = queue::begin_generic_plans(&shared.pool).await?;
        let result = async {
            let states =
                queue::finish_in_tx(&mut tx, &shared.config.id, &items, &shared.config.backoff)
                    .await?;
            let mut completed: BTreeMap<&str, Vec<&FinishedJob>> = BTreeMap::new();
            for (f, state) in finished.iter().zip(&states) {
                if *state == Some(JobState::Completed) {
                    completed.entry(f.job.kind.as_str()).or_default().push(f);
                }
            }
            for (kind, jobs) in completed {
                if let Some(handler) = shared.handlers.get(kind) {
                    handler.on_completed_boxed(&mut tx, &jobs).await?;
                }
            }
            Ok::<_, QueueError>(states)
        }
        .await;
        match result {
            Ok(states) => {
                tx.commit().await?;
                break states;
            }
            Err(QueueError::Database(e)) if queue::is_transient(&e) && tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    let m = metrics();
    for (f, state) in finished.iter().zip(&states) {
        match state {
            Some(JobState::Queued) if matches!(f.outcome, Outcome::Snooze { .. }) => {
                m.llm_budget_waits.with_label_values(&["snoozed"]).inc()
            }
            Some(JobState::Queued) => m.jobs_retried.inc(),
            Some(state) => queue::count_finished([*state]),
            // The job was cancelled while its outcome waited to be written.
            None if shared.cancel_requested(f.job.attempt_id()) => {
                m.worker_jobs_cancelled.inc();
                let _job = executor::job_span(&shared.config.id, &f.job).entered();
                tracing::info!("outcome discarded: the job was cancelled");
            }
            None => {
                m.jobs_lease_lost.inc();
                // The job's span puts its conversation, tenant and worker on
                // the line; made only when there is something to say.
                let _job = executor::job_span(&shared.config.id, &f.job).entered();
                tracing::warn!("outcome discarded: lease lost");
            }
        }
        if let (
            Some(JobState::Queued | JobState::Failed),
            Outcome::Retry { error, .. } | Outcome::Failed { error },
        ) = (state, &f.outcome)
        {
            let _job = executor::job_span(&shared.config.id, &f.job).entered();
            tracing::warn!(%error, state = ?state, "attempt failed");
        }
    }
    Ok(states)
}
