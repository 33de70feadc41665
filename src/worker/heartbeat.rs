//! The heartbeat: keeps the leases of running jobs alive.

use super::Shared;
use crate::queue;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every lease/3, extends all running leases in one statement and cancels
/// the attempts whose lease was lost (rescued after a stall, say). Running
/// means claimed and not yet written: an attempt whose handler returned
/// keeps its lease until the completer has written its outcome.
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.lease / 3;
    loop {
        tokio::select! {
            // The worker has stopped.
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let attempts = shared.running_attempts();
        match queue::heartbeat(
            &shared.lease_pool,
            &shared.config.id,
            shared.config.lease,
            &attempts,
        )
        .await
        {
            Ok(lost) => {
                let running = shared.lock_running();
                for attempt in lost {
                    if let Some(job) = running.get(&attempt) {
                        if !job.cancel.is_cancelled() {
                            tracing::warn!(job_id = %attempt.job, attempt = attempt.attempt, "lease lost; cancelling the attempt");
                            job.cancel.cancel();
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, jobs = attempts.len(), "heartbeat failed"),
        }
    }
}
