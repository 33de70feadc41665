//! The heartbeat: keeps the leases of running jobs alive.

use super::Shared;
use crate::queue;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every lease/3, extends all running leases in one statement and cancels
/// the jobs whose lease was lost (rescued after a stall, say).
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.lease / 3;
    loop {
        tokio::select! {
            // The worker has stopped.
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids = shared.running_ids();
        match queue::heartbeat(
            &shared.lease_pool,
            &shared.config.id,
            shared.config.lease,
            &ids,
        )
        .await
        {
            Ok(lost) => {
                let running = shared.lock_running();
                for id in lost {
                    if let Some(job) = running.get(&id) {
                        tracing::warn!(job_id = %id, "lease lost; cancelling the job");
                        job.cancel.cancel();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, jobs = ids.len(), "heartbeat failed"),
        }
    }
}
