//! The completer: writes outcomes in batches.
//!
//! It takes everything that piled up while it wrote the previous batch, so
//! at low load every outcome is written at once, alone, and under load they
//! are written a thousand to a transaction.

use super::{FinishedJob, Shared};
use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, JobState, Outcome, QueueError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Done>) {
    let max = shared.config.completer_batch.max(1);
    let mut finished = Vec::with_capacity(max);
    let mut released = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(done) = next.take() {
            match done {
                Done::Finished(f) => finished.push(f),
                Done::Release(id) => released.push(id),
            }
            if finished.len() + released.len() < max {
                next = rx.try_recv().ok();
            }
        }
        if !finished.is_empty() {
            write_with_retries(&shared, &finished).await;
            finished.clear();
        }
        if !released.is_empty() {
            match queue::release(&shared.pool, &shared.config.id, &released).await {
                Ok(ids) => tracing::info!(released = ids.len(), "released leases"),
                Err(error) => tracing::error!(%error, "releasing leases failed; they will expire"),
            }
            released.clear();
        }
    }
}

async fn write_with_retries(shared: &Shared, finished: &[FinishedJob]) {
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
                tracing::warn!(job_id = %f.job.id, attempt = f.job.attempt, "outcome discarded: lease lost");
            }
        }
        if let (
            Some(JobState::Queued | JobState::Failed),
            Outcome::Retry { error, .. } | Outcome::Failed { error },
        ) = (state, &f.outcome)
        {
            tracing::warn!(job_id = %f.job.id, attempt = f.job.attempt, %error, state = ?state, "attempt failed");
        }
    }
    Ok(states)
}
