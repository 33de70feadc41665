//! The producer: the claim loop.
//!
//! It claims no more jobs than there are free slots. When a claim comes back
//! full there may be more: it claims again as soon as some slots are free
//! (waiting up to `claim_cooldown` for more of them, so claims stay
//! batched). When a claim comes back short the queue is drained: it
//! registers as a waiter (so enqueues NOTIFY), looks once more, and sleeps
//! until a NOTIFY, a listener reconnect, or the jittered poll. After a
//! listener reconnect it registers again before its next look: the database
//! may have crashed, and its unlogged `queue_waiters` with it.

use super::{executor, Done, Shared};
use crate::metrics::metrics;
use crate::queue::{self, notify};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First pause after a failed claim or registration.
const RETRY_MIN: Duration = Duration::from_millis(50);

pub(super) async fn run(
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<Done>,
    stop: CancellationToken,
) {
    let config = &shared.config;
    // Free slots worth a claim of their own while a backlog remains.
    let batch_threshold = (config.max_claim.min(config.concurrency) / 10).max(1);
    let mut registered: Option<Instant> = None;
    let refresh_every = Duration::from_secs(30);
    let mut epoch = shared.listener_epoch.load(Ordering::SeqCst);
    // Pause after a failed claim or registration (the database restarting:
    // pooled connections fail once each), doubling up to the poll interval.
    let mut retry_in = RETRY_MIN;
    while !stop.is_cancelled() {
        let now = shared.listener_epoch.load(Ordering::SeqCst);
        if now != epoch {
            // The listener reconnected: the registration may be gone.
            epoch = now;
            registered = None;
        }
        let free = shared.slots.available_permits();
        if free == 0 {
            tokio::select! {
                // Shutdown: stop claiming.
                _ = stop.cancelled() => break,
                // A job finished: a slot is free.
                _ = shared.slot_freed.notified() => continue,
            }
        }
        let want = free.min(config.max_claim);
        let jobs = match queue::claim_at(
            &shared.lease_pool,
            &config.id,
            want,
            config.lease,
            &shared.kinds,
            config.schema,
        )
        .await
        {
            Ok(jobs) => jobs,
            Err(error) => {
                shared.failed_claims.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "claim failed");
                sleep_or_stop(&stop, retry_in).await;
                retry_in = (retry_in * 2).min(config.poll_interval.max(RETRY_MIN));
                continue;
            }
        };
        let got = jobs.len();
        if got == want || registered.is_some() {
            retry_in = RETRY_MIN;
        }
        tracing::trace!(want, got, "claimed");
        shared.claims.fetch_add(1, Ordering::Relaxed);
        metrics().jobs_claimed.inc_by(got as u64);
        for job in jobs {
            // Only this loop takes permits, and it claimed no more jobs than
            // were free, so one is available for every job.
            let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                unreachable!("claimed more jobs than free slots")
            };
            executor::spawn(shared.clone(), job, permit, done.clone());
        }

        if got == want {
            // A backlog: not waiting for anything, so stop the NOTIFYs.
            if registered.take().is_some() {
                unregister(&shared).await;
            }
            wait_for_slots(&shared, &stop, batch_threshold, config.claim_cooldown).await;
            continue;
        }
        match registered {
            None => {
                // Register, then look once more: a job enqueued before the
                // registration is seen by that look, one after it notifies.
                match notify::register_waiter(&shared.pool, queue::JOBS_CHANNEL, &config.id).await {
                    Ok(()) => registered = Some(Instant::now()),
                    Err(error) => tracing::warn!(%error, "waiter registration failed"),
                }
                if registered.is_none() {
                    // Not registered, so no NOTIFY would come: try again
                    // soon rather than at the fallback poll.
                    sleep_or_stop(&stop, retry_in).await;
                    retry_in = (retry_in * 2).min(config.poll_interval.max(RETRY_MIN));
                }
                continue;
            }
            Some(at) if at.elapsed() >= refresh_every => {
                if notify::register_waiter(&shared.pool, queue::JOBS_CHANNEL, &config.id)
                    .await
                    .is_ok()
                {
                    registered = Some(Instant::now());
                }
            }
            Some(_) => {}
        }
        let poll = config
            .poll_interval
            .mul_f64(rand::thread_rng().gen_range(0.8..1.2));
        tokio::select! {
            // Shutdown: stop claiming.
            _ = stop.cancelled() => break,
            // A NOTIFY (or a listener reconnect): jobs may be ready.
            _ = shared.wake.notified() => {}
            // The fallback poll: delayed jobs come due without a NOTIFY.
            _ = tokio::time::sleep(poll) => {}
        }
    }
    if registered.is_some() {
        unregister(&shared).await;
    }
}

/// Waits until `threshold` slots are free, or `cooldown` passed with at
/// least one free.
async fn wait_for_slots(
    shared: &Shared,
    stop: &CancellationToken,
    threshold: usize,
    cooldown: Duration,
) {
    let deadline = Instant::now() + cooldown;
    while shared.slots.available_permits() < threshold {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.slot_freed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                if shared.slots.available_permits() > 0 {
                    return;
                }
                // Still full: wait for the next free slot.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = shared.slot_freed.notified() => return,
                }
            }
        }
    }
}

async fn unregister(shared: &Shared) {
    if let Err(error) =
        notify::unregister_waiter(&shared.pool, queue::JOBS_CHANNEL, &shared.config.id).await
    {
        tracing::warn!(%error, "waiter unregistration failed");
    }
}

async fn sleep_or_stop(stop: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}
