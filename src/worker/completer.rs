//! The completer: writes outcomes in batches.
//!
//! It takes everything that piled up while it wrote the previous batch, so
//! at low load every outcome is written at once, alone, and under load they
//! are written up to a thousand to a transaction, a few transactions at once.

use super::{executor, FinishedJob, Shared};
use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, JobState, Outcome, QueueError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What executors send the completer.
pub(super) enum Done {
    /// An attempt ended: write its outcome.
    Finished(FinishedJob),
    /// Abandoned at shutdown: give the lease back.
    Release(JobId),
}

/// Tries of one batch before giving up on it; the leases then expire and the
/// rescuer runs the jobs again.
const WRITE_TRIES: u32 = 5;

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
        // Take whatever is already waiting, up to a batch.
        while open && finished.len() < max {
            match rx.try_recv() {
                Ok(Done::Finished(f)) => finished.push(f),
                Ok(Done::Release(id)) => release(&shared, id).await,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !finished.is_empty() && writes.len() < parallelism {
            let batch = std::mem::take(&mut finished);
            let shared = shared.clone();
            writes.spawn(async move { write_with_retries(&shared, &batch).await });
            continue;
        }
        if !open && finished.is_empty() && writes.is_empty() {
            return;
        }
        tokio::select! {
            // More outcomes (only while the batch has room).
            received = rx.recv(), if open && finished.len() < max => match received {
                Some(Done::Finished(f)) => finished.push(f),
                Some(Done::Release(id)) => release(&shared, id).await,
                None => open = false,
            },
            // A write finished: room for the next batch.
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
        }
    }
}

/// Gives back the lease of a job abandoned at shutdown (rare: one at a time).
async fn release(shared: &Shared, id: JobId) {
    match queue::release(&shared.pool, &shared.config.id, &[id]).await {
        Ok(ids) if !ids.is_empty() => tracing::info!(job_id = %id, "released lease"),
        Ok(_) => tracing::warn!(job_id = %id, "lease already gone at release"),
        Err(error) => {
            tracing::error!(%error, job_id = %id, "releasing lease failed; it will expire")
        }
    }
}

async fn write_with_retries(shared: &Shared, finished: &[FinishedJob]) {
    let span = tracing::info_span!("complete", worker = %shared.config.id, jobs = finished.len());
    write_with_retries_in_span(shared, finished)
        .instrument(span)
        .await
}

async fn write_with_retries_in_span(shared: &Shared, finished: &[FinishedJob]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=WRITE_TRIES {
        match write(shared, finished).await {
            Ok(_) => return,
            Err(error) if attempt < WRITE_TRIES => {
                tracing::warn!(%error, jobs = finished.len(), attempt, "writing outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => tracing::error!(
                %error,
                jobs = finished.len(),
                "writing outcomes failed; the leases will expire and the jobs run again"
            ),
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
        let mut tx = shared.pool.begin().await?;
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
            Some(JobState::Queued) => m.jobs_retried.inc(),
            Some(state) => m.jobs_finished.with_label_values(&[state.as_str()]).inc(),
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
