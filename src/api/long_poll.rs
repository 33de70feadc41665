//! Long-polls: `GET /v1/chat/{id}?wait=N` answers as soon as the job is
//! finished, woken by NOTIFY, with a cheap re-check as the safety net.
//!
//! One LISTEN connection per process ([`queue::notify::spawn_listener_with`] on
//! [`queue::DONE_CHANNEL`]) receives the ids of finished jobs and wakes the
//! requests waiting on them through a map `job id → Notify`. The jobs a
//! wake-up names are read for their waiters with one statement
//! ([`queue::read::get_many`]): the wake-ups that arrive while one such read
//! runs share the next. A waiter left without an answer (the read failed,
//! or another tenant's job) reads its job itself.
//!
//! Why no completion is missed:
//! - Finishing statements NOTIFY only while the channel has a registered
//!   waiter. The process registers itself (`queue_waiters`) before a wait's
//!   read, keeps the row fresh every [`REFRESH`] while waits are in flight
//!   (stale rows are pruned after 120 s), and unregisters after a quiet
//!   interval and at shutdown.
//! - The listener must really be listening: waits hold their first read
//!   until the listener reports that its LISTEN is in effect. (A job found
//!   finished meanwhile is answered at once: it needs no wake-up.)
//! - A lost listener connection (found by its end of stream or by the
//!   listener's self-probe) is replaced; once the new one listens, the
//!   registration is taken as gone (after a crash, the unlogged
//!   `queue_waiters` is empty), and every waiter registers again and
//!   re-reads its job.
//! - A wait enables its `Notified` future *before* reading the job, so a
//!   notification that arrives between the read and the wait still wakes it.
//! - Whatever else goes wrong, every [`LongPollConfig::recheck`] one
//!   statement asks which of the jobs being waited on are finished and wakes
//!   their waiters: no long-poll outwaits a lost NOTIFY by more than that.
//!
//! Long-polls hold a request open each, so they are capped per process and
//! per tenant; over the cap a wait is refused at once with 429 and
//! `Retry-After`, never queued.

use super::error::ApiError;
use crate::ids::{JobId, TenantId};
use crate::metrics::metrics;
use crate::queue::notify::{self, ListenerConfig};
use crate::queue::{self, JobView};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the waiter registration is refreshed (the queue prunes
/// registrations older than 120 s).
pub const REFRESH: Duration = Duration::from_secs(30);
/// Pause after a failed read of a waiting long-poll, doubling up to the
/// re-check interval (pooled connections fail once each after a restart).
const RETRY_MIN: Duration = Duration::from_millis(100);
/// `registered` when no registration is believed to exist.
const UNREGISTERED: u64 = u64::MAX;

/// A wait over one of the caps (`scope`: `process` or `tenant`).
#[derive(Debug)]
pub struct Refused {
    scope: &'static str,
    retry_after_secs: u64,
}

impl Refused {
    /// The 429 to answer with; counted in `skipjack_long_polls_refused_total`.
    pub fn into_error(self) -> ApiError {
        metrics()
            .long_polls_refused
            .with_label_values(&[self.scope])
            .inc();
        ApiError::TooManyWaits {
            scope: self.scope,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// Settings of the long-poll machinery.
#[derive(Clone, Debug)]
pub struct LongPollConfig {
    /// Time between the re-checks of all waiting jobs (one statement).
    pub recheck: Duration,
    /// Long-polls in flight in this process; more get 429.
    pub max_waits: usize,
    /// Long-polls in flight of one tenant in this process; more get 429.
    pub max_tenant_waits: usize,
    /// `Retry-After` of a refused long-poll, in seconds.
    pub retry_after_secs: u64,
    /// How the LISTEN connection is checked.
    pub listener: ListenerConfig,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            recheck: Duration::from_secs(5),
            max_waits: 10_000,
            max_tenant_waits: 5_000,
            retry_after_secs: 1,
            listener: ListenerConfig::default(),
        }
    }
}

/// One job's waiters.
struct Slot {
    /// Requests waiting on this job.
    count: usize,
    notify: Arc<Notify>,
    /// The finished job, once a wake-up's read found it.
    answer: Option<JobView>,
}

/// The process's long-poll machinery.
pub struct LongPoll {
    pool: PgPool,
    config: LongPollConfig,
    /// The LISTEN connection's pool (a direct one behind PgBouncer).
    listen_pool: PgPool,
    /// This process's name in `queue_waiters`.
    name: String,
    slots: Mutex<HashMap<JobId, Slot>>,
    /// Jobs named by wake-ups since the last wake-up read.
    woken: Mutex<Vec<JobId>>,
    /// Wakes the wake-up reader.
    read_woken: Notify,
    /// Wake-up reads so far.
    wake_reads: AtomicU64,
    /// Reads of one job by its waiter so far.
    own_reads: AtomicU64,
    /// Waits in flight.
    in_flight: AtomicUsize,
    /// Waits in flight per tenant; its lock also serialises admissions.
    tenants: Mutex<HashMap<TenantId, usize>>,
    /// Listener connections so far: bumped at every reconnect, after which
    /// earlier registrations may be gone.
    epoch: AtomicU64,
    /// The `epoch` in which the `queue_waiters` row was last written, or
    /// [`UNREGISTERED`]. Cleared *before* the row is deleted, and a wait
    /// counts itself in `in_flight` before reading this, so a wait that sees
    /// the current epoch is always covered.
    registered: AtomicU64,
    /// Serialises registering and unregistering.
    registration: tokio::sync::Mutex<()>,
    /// True once the listener is known to be listening.
    listening: watch::Sender<bool>,
}

/// A wait admitted under the caps: counts it in flight (in total and for
/// its tenant) while it lives. An event stream holds one for its whole
/// life.
pub struct Admitted {
    long_poll: Arc<LongPoll>,
    tenant: TenantId,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut tenants = self.long_poll.lock_tenants();
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
        self.long_poll.in_flight.fetch_sub(1, Ordering::SeqCst);
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
    /// Long-polls over `pool` with `config`; [`LongPoll::spawn`] starts
    /// its listener.
    pub fn new(pool: PgPool, config: LongPollConfig) -> Arc<Self> {
        Self::with_listener_pool(pool.clone(), pool, config)
    }

    /// [`LongPoll::new`] with the LISTEN connection taken from `listen_pool`.
    pub fn with_listener_pool(
        pool: PgPool,
        listen_pool: PgPool,
        config: LongPollConfig,
    ) -> Arc<Self> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "api".to_owned());
        let suffix: u32 = rand::random();
        Arc::new(LongPoll {
            pool,
            config,
            listen_pool,
            name: format!("api-{host}-{}-{:08x}", std::process::id(), suffix),
            slots: Mutex::new(HashMap::new()),
            woken: Mutex::new(Vec::new()),
            read_woken: Notify::new(),
            wake_reads: AtomicU64::new(0),
            own_reads: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            tenants: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            registered: AtomicU64::new(UNREGISTERED),
            registration: tokio::sync::Mutex::new(()),
            listening: watch::channel(false).0,
        })
    }

    /// Starts the listener, the re-check and the registration upkeep; all
    /// end on `stop`, and the registration is removed then.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let waker = self.clone();
        let listener = notify::spawn_listener_with(
            self.listen_pool.clone(),
            vec![queue::DONE_CHANNEL],
            self.config.listener.clone(),
            move |wakeup| waker.on_wakeup(wakeup),
            stop.clone(),
        );
        let recheck = tokio::spawn(self.clone().recheck(stop.clone()));
        let reader = tokio::spawn(self.clone().read_wakeups(stop.clone()));
        let upkeep = tokio::spawn(self.clone().upkeep(stop));
        vec![listener, recheck, reader, upkeep]
    }

    /// Waits in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// True once the listener has been heard listening.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Listener reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Wake-up reads so far (each answers the waiters of every job its
    /// wake-ups named).
    pub fn wake_reads(&self) -> u64 {
        self.wake_reads.load(Ordering::Relaxed)
    }

    /// Reads of one job by a waiter so far (each wait's first, and those
    /// after a wake-up that brought no answer).
    pub fn own_reads(&self) -> u64 {
        self.own_reads.load(Ordering::Relaxed)
    }

    async fn read_own(
        &self,
        job: JobId,
        tenant: TenantId,
    ) -> crate::queue::Result<Option<JobView>> {
        self.own_reads.fetch_add(1, Ordering::Relaxed);
        queue::get(&self.pool, job, Some(tenant)).await
    }

    /// The job, once it is finished or at `deadline` (or at `shutdown`),
    /// whichever comes first; `None` if the tenant has no such job. Refused
    /// with 429 while the process or the tenant has its maximum of waits in
    /// flight.
    pub async fn wait(
        self: &Arc<Self>,
        job: JobId,
        tenant: TenantId,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Option<JobView>, ApiError> {
        let admitted = self.admit(tenant)?;
        self.wait_admitted(&admitted, job, deadline, shutdown).await
    }

    /// [`LongPoll::wait`] for a wait already admitted (an event stream
    /// admits itself before it answers, and may wait several times).
    pub async fn wait_admitted(
        &self,
        admitted: &Admitted,
        job: JobId,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Option<JobView>, ApiError> {
        let tenant = admitted.tenant;
        let mut listening = self.listening.subscribe();
        if !*listening.borrow_and_update() {
            // No listener yet (starting, or reconnecting after a database
            // restart): a job already finished is answered without waiting
            // for one.
            if let Ok(found) = self.read_own(job, tenant).await {
                if found.as_ref().is_none_or(|view| view.state.is_final()) {
                    return Ok(found);
                }
            }
        }
        tokio::select! {
            // Normally at once: the listener connected long ago.
            _ = listening.wait_for(|l| *l) => {}
            // No listener yet: give the current state rather than hang.
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.cancelled() => {}
        }
        let subscription = self.subscribe(job);
        let mut last_look = false;
        let mut retry_in = RETRY_MIN;
        loop {
            let notified = subscription.notify.notified();
            tokio::pin!(notified);
            // Registered for wake-ups before the read: none can be lost.
            notified.as_mut().enable();
            let looked = match self.answer(job, tenant) {
                // A wake-up's read found it finished.
                Some(view) => Ok(Some(view)),
                None => match self.ensure_registered().await {
                    Ok(()) => self.read_own(job, tenant).await.map_err(ApiError::from),
                    Err(error) => Err(error),
                },
            };
            let failed = match looked {
                Ok(None) => return Ok(None),
                Ok(Some(view)) if view.state.is_final() || last_look => return Ok(Some(view)),
                Ok(Some(_)) => {
                    retry_in = RETRY_MIN;
                    false
                }
                Err(error) if last_look => return Err(error),
                // The database is away (a restart?): look again later
                // rather than fail a wait that has time left.
                Err(error) => {
                    tracing::debug!(%error, retry_in_ms = retry_in.as_millis() as u64, "long-poll read failed; retrying");
                    true
                }
            };
            tokio::select! {
                // The job finished (or the listener reconnected, or the
                // re-check found it finished): look again.
                _ = &mut notified => {}
                // After a failed read: try again shortly.
                _ = tokio::time::sleep(retry_in), if failed => {
                    retry_in = (retry_in * 2).min(self.config.recheck.max(RETRY_MIN));
                }
                // Time is up: one last look.
                _ = tokio::time::sleep_until(deadline) => last_look = true,
                // Shutting down: answer with the current state now.
                _ = shutdown.cancelled() => last_look = true,
            }
        }
    }

    /// Counts a wait in, or refuses it when a cap is reached.
    pub fn admit(self: &Arc<Self>, tenant: TenantId) -> Result<Admitted, ApiError> {
        self.try_admit(tenant)
            .map_err(|refused| refused.into_error())
    }

    /// Counts a wait in, or says which cap is reached without counting a
    /// refusal yet: the caller may still answer without waiting (a job
    /// that is already finished needs no wait).
    pub fn try_admit(self: &Arc<Self>, tenant: TenantId) -> Result<Admitted, Refused> {
        let mut tenants = self.lock_tenants();
        let refused = |scope| Refused {
            scope,
            retry_after_secs: self.config.retry_after_secs,
        };
        if self.in_flight() >= self.config.max_waits {
            return Err(refused("process"));
        }
        let mine = tenants.entry(tenant).or_insert(0);
        if *mine >= self.config.max_tenant_waits {
            return Err(refused("tenant"));
        }
        *mine += 1;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(Admitted {
            long_poll: self.clone(),
            tenant,
        })
    }

    fn subscribe(&self, job: JobId) -> Subscription<'_> {
        let mut slots = self.lock_slots();
        let slot = slots.entry(job).or_insert_with(|| Slot {
            count: 0,
            notify: Arc::new(Notify::new()),
            answer: None,
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
            notify::Wakeup::Listening => {
                self.listening.send_replace(true);
            }
            notify::Wakeup::Notification { payload, .. } => {
                let slots = self.lock_slots();
                if slots.is_empty() {
                    return;
                }
                let mut woken = self.lock_woken();
                let before = woken.len();
                woken.extend(
                    payload
                        .split(',')
                        .filter_map(|id| id.trim().parse::<JobId>().ok())
                        .filter(|id| slots.contains_key(id)),
                );
                if woken.len() > before {
                    self.read_woken.notify_one();
                }
            }
            notify::Wakeup::Reconnected => {
                // Notifications may have been lost and the registration
                // with them: everyone registers again and looks again.
                metrics().listener_reconnects.inc();
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.listening.send_replace(true);
                self.wake_all();
            }
        }
    }

    /// The finished job a wake-up's read found for `job`, if it is
    /// `tenant`'s.
    fn answer(&self, job: JobId, tenant: TenantId) -> Option<JobView> {
        let slots = self.lock_slots();
        let view = slots.get(&job)?.answer.as_ref()?;
        (view.tenant_id == Some(tenant)).then(|| view.clone())
    }

    /// Reads the jobs the wake-ups named, all in one statement, and wakes
    /// their waiters with the answers. The wake-ups that arrive while a
    /// read runs form the next one.
    async fn read_wakeups(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.read_woken.notified() => {}
            }
            // The completions of one batch come in one wake-up, but those of
            // batches written at the same moment come in several: let those
            // already on their way arrive first.
            tokio::task::yield_now().await;
            let mut ids = std::mem::take(&mut *self.lock_woken());
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                continue;
            }
            self.wake_reads.fetch_add(1, Ordering::Relaxed);
            let found = queue::read::get_many(&self.pool, &ids).await;
            if let Err(error) = &found {
                // Each waiter reads its job itself.
                tracing::debug!(%error, "long-poll wake-up read failed");
            }
            let mut found: HashMap<JobId, JobView> = found
                .unwrap_or_default()
                .into_iter()
                .filter(|view| view.state.is_final())
                .map(|view| (view.id, view))
                .collect();
            let mut slots = self.lock_slots();
            for id in ids {
                if let Some(slot) = slots.get_mut(&id) {
                    if let Some(view) = found.remove(&id) {
                        slot.answer = Some(view);
                    }
                    slot.notify.notify_waiters();
                }
            }
        }
    }

    fn wake_all(&self) {
        for slot in self.lock_slots().values() {
            slot.notify.notify_waiters();
        }
    }

    /// Makes sure the `queue_waiters` row exists in the current listener
    /// epoch.
    async fn ensure_registered(&self) -> Result<(), ApiError> {
        if self.registered.load(Ordering::SeqCst) == self.epoch.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _guard = self.registration.lock().await;
        // Read before writing: a reconnect during the write moves the epoch
        // on, and the next wait registers again.
        let epoch = self.epoch.load(Ordering::SeqCst);
        if self.registered.load(Ordering::SeqCst) != epoch {
            notify::register_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await?;
            self.registered.store(epoch, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Every `recheck`: wakes the waiters of jobs that finished without
    /// their NOTIFY being heard.
    async fn recheck(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let waiting: Vec<JobId> = self.lock_slots().keys().copied().collect();
            if waiting.is_empty() {
                continue;
            }
            match notify::finished_among(&self.pool, &waiting).await {
                Ok(finished) => {
                    let slots = self.lock_slots();
                    for id in finished {
                        if let Some(slot) = slots.get(&id) {
                            metrics().long_poll_rechecks_woken.inc();
                            slot.notify.notify_waiters();
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "long-poll re-check failed"),
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
            if self.registered.load(Ordering::SeqCst) == UNREGISTERED {
                continue;
            }
            let idle = self.in_flight() == 0;
            if idle && was_idle {
                self.unregister().await;
            } else {
                let epoch = self.epoch.load(Ordering::SeqCst);
                match notify::register_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await {
                    Ok(()) => self.registered.store(epoch, Ordering::SeqCst),
                    Err(error) => {
                        tracing::warn!(%error, "cannot refresh the long-poll waiter registration")
                    }
                }
            }
            was_idle = idle;
        }
        let _guard = self.registration.lock().await;
        self.registered.store(UNREGISTERED, Ordering::SeqCst);
        if let Err(error) =
            notify::unregister_waiter(&self.pool, queue::DONE_CHANNEL, &self.name).await
        {
            tracing::warn!(%error, "cannot remove the long-poll waiter registration");
        }
    }

    /// Drops the registration unless a wait slipped in; call with the
    /// registration lock held.
    async fn unregister(&self) {
        let was = self.registered.swap(UNREGISTERED, Ordering::SeqCst);
        if self.in_flight() > 0 {
            // A wait started after the idle check and may rely on the row.
            self.registered.store(was, Ordering::SeqCst);
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

    fn lock_woken(&self) -> std::sync::MutexGuard<'_, Vec<JobId>> {
        self.woken.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, usize>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}
