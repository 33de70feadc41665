//! Long-polls: `GET /v1/chat/{id}?wait=N` answers as soon as the job is
//! finished, woken by NOTIFY, with no polling of the database.
//!
//! One LISTEN connection per process ([`queue::notify::spawn_listener`] on
//! [`queue::DONE_CHANNEL`]) receives the ids of finished jobs and wakes the
//! requests waiting on them through a map `job id → Notify`.
//!
//! Why no completion is missed:
//! - Finishing statements NOTIFY only while the channel has a registered
//!   waiter. The process registers itself (`queue_waiters`) before a wait's
//!   first read, keeps the row fresh every [`REFRESH`] while waits are in
//!   flight (stale rows are pruned after 120 s), and unregisters after a
//!   quiet interval and at shutdown.
//! - The listener must really be listening: at start the process NOTIFYs
//!   itself a probe until the listener hears it, and waits hold their first
//!   read until then. A reconnected listener reports `Reconnected` only once
//!   it listens again, and every waiter then re-reads its job.
//! - A wait enables its `Notified` future *before* reading the job, so a
//!   notification that arrives between the read and the wait still wakes it.

use super::error::ApiError;
use super::sql;
use crate::ids::{JobId, TenantId};
use crate::metrics::metrics;
use crate::queue::{self, notify, JobView};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the waiter registration is refreshed (the queue prunes
/// registrations older than 120 s).
pub const REFRESH: Duration = Duration::from_secs(30);
/// Payload prefix of the listener probe; never a job id.
const PROBE_PREFIX: &str = "probe:";
/// How long to wait for the first probe before sending another; doubles
/// up to [`PROBE_RETRY_MAX`] (the listener may still be connecting).
const PROBE_RETRY_MIN: Duration = Duration::from_millis(10);
const PROBE_RETRY_MAX: Duration = Duration::from_millis(500);

/// One job's waiters.
struct Slot {
    /// Requests waiting on this job.
    count: usize,
    notify: Arc<Notify>,
}

/// The process's long-poll machinery.
pub struct LongPoll {
    pool: PgPool,
    /// This process's name in `queue_waiters` and in its probes.
    name: String,
    slots: Mutex<HashMap<JobId, Slot>>,
    /// Waits in flight.
    in_flight: AtomicUsize,
    /// True while the `queue_waiters` row is believed to exist. Cleared
    /// *before* the row is deleted, and a wait counts itself in `in_flight`
    /// before reading this, so a wait that sees `true` is always covered.
    registered: AtomicBool,
    /// Serialises registering and unregistering.
    registration: tokio::sync::Mutex<()>,
    /// True once the listener is known to be listening.
    listening: watch::Sender<bool>,
}

/// Counts a wait in flight while it lives.
struct InFlight<'a>(&'a LongPoll);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Interest in one job's completion, dropped when the wait ends.
struct Subscription<'a> {
    long_poll: &'a LongPoll,
    job: JobId,
    notify: Arc<Notify>,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut slots = self.long_poll.lock_slots();
        if let Some(slot) = slots.get_mut(&self.job) {
            slot.count -= 1;
            if slot.count == 0 {
                slots.remove(&self.job);
            }
        }
    }
}

impl LongPoll {
    pub fn new(pool: PgPool) -> Arc<Self> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "api".to_owned());
        let suffix: u32 = rand::random();
        Arc::new(LongPoll {
            pool,
            name: format!("api-{host}-{}-{:08x}", std::process::id(), suffix),
            slots: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            registered: AtomicBool::new(false),
            registration: tokio::sync::Mutex::new(()),
            listening: watch::channel(false).0,
        })
    }

    /// Starts the listener, the probe that confirms it, and the
    /// registration upkeep; all end on `stop`, and the registration is
    /// removed then.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let waker = self.clone();
        let listener = notify::spawn_listener(
            self.pool.clone(),
            vec![queue::DONE_CHANNEL],
            move |wakeup| waker.on_wakeup(wakeup),
            stop.clone(),
        );
        let probe = tokio::spawn(self.clone().probe(stop.clone()));
        let upkeep = tokio::spawn(self.clone().upkeep(stop));
        vec![listener, probe, upkeep]
    }

    /// Waits in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// True once the listener has been heard listening.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// The job, once it is finished or at `deadline` (or at `shutdown`),
    /// whichever comes first; `None` if the tenant has no such job.
    pub async fn wait(
        &self,
        job: JobId,
        tenant: TenantId,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Option<JobView>, ApiError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(self);
        self.ensure_registered().await?;
        let mut listening = self.listening.subscribe();
        tokio::select! {
            // Normally at once: the probe succeeded long ago.
            _ = listening.wait_for(|l| *l) => {}
            // No listener yet: give the current state rather than hang.
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.cancelled() => {}
        }
        let subscription = self.subscribe(job);
        let mut last_look = false;
        loop {
            let notified = subscription.notify.notified();
            tokio::pin!(notified);
            // Registered for wake-ups before the read: none can be lost.
            notified.as_mut().enable();
            let view = queue::get(&self.pool, job, Some(tenant)).await?;
            match view {
                None => return Ok(None),
                Some(view) if view.state.is_final() || last_look => return Ok(Some(view)),
                Some(_) => {}
            }
            tokio::select! {
                // The job finished (or the listener reconnected): look again.
                _ = &mut notified => {}
                // Time is up: one last look.
                _ = tokio::time::sleep_until(deadline) => last_look = true,
                // Shutting down: answer with the current state now.
                _ = shutdown.cancelled() => last_look = true,
            }
        }
    }

    fn subscribe(&self, job: JobId) -> Subscription<'_> {
        let mut slots = self.lock_slots();
        let slot = slots.entry(job).or_insert_with(|| Slot {
            count: 0,
            notify: Arc::new(Notify::new()),
        });
        slot.count += 1;
        Subscription {
            long_poll: self,
            job,
            notify: slot.notify.clone(),
        }
    }

    fn on_wakeup(&self, wakeup: notify::Wakeup) {
        match wakeup {
            notify::Wakeup::Notification { payload, .. } => {
                if let Some(name) = payload.strip_prefix(PROBE_PREFIX) {
                    if name == self.name {
                        self.listening.send_replace(true);
                    }
                    return;
                }
                let slots = self.lock_slots();
                if slots.is_empty() {
                    return;
                }
                for id in payload.split(',') {
                    if let Ok(id) = id.trim().parse::<JobId>() {
                        if let Some(slot) = slots.get(&id) {
                            slot.notify.notify_waiters();
                        }
                    }
                }
            }
            notify::Wakeup::Reconnected => {
                // Notifications may have been lost: everyone looks again.
                metrics().listener_reconnects.inc();
                self.listening.send_replace(true);
                for slot in self.lock_slots().values() {
                    slot.notify.notify_waiters();
                }
            }
        }
    }

    async fn ensure_registered(&self) -> Result<(), ApiError> {
        if self.registered.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _guard = self.registration.lock().await;
        if !self.registered.load(Ordering::SeqCst) {
            notify::register_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await?;
            self.registered.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// NOTIFYs this process until its listener hears it.
    async fn probe(self: Arc<Self>, stop: CancellationToken) {
        let payload = format!("{PROBE_PREFIX}{}", self.name);
        let mut listening = self.listening.subscribe();
        let mut retry = PROBE_RETRY_MIN;
        while !self.is_listening() {
            if let Err(error) = sqlx::query(sql::LISTENER_PROBE)
                .bind(queue::DONE_CHANNEL)
                .bind(&payload)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(%error, "listener probe failed");
            }
            tokio::select! {
                // Shutting down.
                _ = stop.cancelled() => return,
                // Heard: done.
                _ = listening.wait_for(|l| *l) => return,
                // Not heard yet (still connecting, or the database is down).
                _ = tokio::time::sleep(retry) => retry = (retry * 2).min(PROBE_RETRY_MAX),
            }
        }
    }

    /// Keeps the registration fresh while waits are in flight, drops it
    /// after a quiet [`REFRESH`] interval, and at `stop`.
    async fn upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_idle = false;
        loop {
            tokio::select! {
                // Shutting down: unregister below.
                _ = stop.cancelled() => break,
                // Time to refresh or retire the registration.
                _ = tick.tick() => {}
            }
            let _guard = self.registration.lock().await;
            if !self.registered.load(Ordering::SeqCst) {
                continue;
            }
            let idle = self.in_flight() == 0;
            if idle && was_idle {
                self.unregister().await;
            } else if let Err(error) =
                notify::register_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await
            {
                tracing::warn!(%error, "cannot refresh the long-poll waiter registration");
            }
            was_idle = idle;
        }
        let _guard = self.registration.lock().await;
        self.registered.store(false, Ordering::SeqCst);
        if let Err(error) =
            notify::unregister_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await
        {
            tracing::warn!(%error, "cannot remove the long-poll waiter registration");
        }
    }

    /// Drops the registration unless a wait slipped in; call with the
    /// registration lock held.
    async fn unregister(&self) {
        self.registered.store(false, Ordering::SeqCst);
        if self.in_flight() > 0 {
            // A wait started after the idle check and may rely on the row.
            self.registered.store(true, Ordering::SeqCst);
            return;
        }
        if let Err(error) =
            notify::unregister_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await
        {
            tracing::warn!(%error, "cannot remove the long-poll waiter registration");
        }
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Slot>> {
        // The map stays consistent even if a holder panicked.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}
