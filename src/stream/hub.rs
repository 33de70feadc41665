//! The API replica's side: one reader for all the streams the process
//! serves.
//!
//! Each open stream holds a [`Subscription`]: its job and its cursor. Every
//! NOTIFY of [`super::STREAM_CHANNEL`] names the jobs a publisher just wrote
//! pieces of; those this process serves are marked, and one statement reads
//! what is new for all marked streams and hands each its pieces in order.
//! A burst of notifications while a read runs costs one more read, not one
//! per notification, and a read costs one index probe per stream with news,
//! not per stream open. Every [`HubConfig::poll`], and when the listener
//! (re)connects, every stream is read: the safety net for a lost
//! notification.

use super::{Cursor, Delta};
use crate::ids::JobId;
use crate::queue::notify::{self, ListenerConfig};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the hub reads.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Read even without a notification this often while streams are open.
    pub poll: Duration,
    /// How the LISTEN connection is checked.
    pub listener: ListenerConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            poll: Duration::from_secs(1),
            listener: ListenerConfig::default(),
        }
    }
}

/// One open stream, as the hub sees it.
struct Sub {
    job: JobId,
    /// The last piece handed over.
    cursor: Cursor,
    tx: mpsc::UnboundedSender<Delta>,
}

/// The process's stream reader.
pub struct Hub {
    pool: PgPool,
    listen_pool: PgPool,
    config: HubConfig,
    subs: Mutex<HashMap<u64, Sub>>,
    /// Streams open per job, to tell which notified jobs concern us.
    jobs: Mutex<HashMap<JobId, usize>>,
    /// Jobs to read at the next read: notified, or just subscribed.
    dirty: Mutex<HashSet<JobId>>,
    /// Read every stream at the next read (poll, reconnect).
    all_dirty: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    /// Rung by the listener and by new subscriptions.
    wake: Notify,
    /// Reads run so far (for tests: wake-ups stay batched).
    reads: AtomicU64,
}

impl Hub {
    /// A hub reading through `pool` and listening through `listen_pool` (a
    /// direct connection behind a transaction-mode PgBouncer).
    pub fn new(pool: PgPool, listen_pool: PgPool, config: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            pool,
            listen_pool,
            config,
            subs: Mutex::default(),
            jobs: Mutex::default(),
            dirty: Mutex::default(),
            all_dirty: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            wake: Notify::new(),
            reads: AtomicU64::new(0),
        })
    }

    /// Starts the listener and the reader; both end at `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let waker = self.clone();
        // Its own name, so operators (and tests) tell it from the
        // long-polls' LISTEN session.
        let config = ListenerConfig {
            name: "stream-listener".to_owned(),
            ..self.config.listener.clone()
        };
        let listener = notify::spawn_listener_with(
            self.listen_pool.clone(),
            vec![super::STREAM_CHANNEL],
            config,
            move |wakeup| waker.on_wakeup(wakeup),
            stop.clone(),
        );
        let reader = tokio::spawn(self.clone().read_loop(stop));
        vec![listener, reader]
    }

    /// Follows `job` from just after `cursor`.
    pub fn subscribe(self: &Arc<Self>, job: JobId, cursor: Cursor) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_subs().insert(id, Sub { job, cursor, tx });
        *lock(&self.jobs).entry(job).or_insert(0) += 1;
        // Pieces written before the subscription: read them now.
        lock(&self.dirty).insert(job);
        self.wake.notify_one();
        Subscription {
            hub: self.clone(),
            id,
            rx,
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.lock_subs().len()
    }

    /// Reads run so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn lock_subs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sub>> {
        lock(&self.subs)
    }

    fn on_wakeup(&self, wakeup: notify::Wakeup) {
        match wakeup {
            notify::Wakeup::Notification { payload, .. } => {
                let mut marked = false;
                {
                    let jobs = lock(&self.jobs);
                    if jobs.is_empty() {
                        return;
                    }
                    let mut dirty = lock(&self.dirty);
                    for id in payload.split(',') {
                        if let Ok(id) = id.trim().parse::<JobId>() {
                            if jobs.contains_key(&id) {
                                dirty.insert(id);
                                marked = true;
                            }
                        }
                    }
                }
                if marked {
                    self.wake.notify_one();
                }
            }
            // Listening at last, or again after a lost connection:
            // notifications may have been missed.
            notify::Wakeup::Listening | notify::Wakeup::Reconnected => {
                self.all_dirty.store(true, Ordering::SeqCst);
                self.wake.notify_one();
            }
        }
    }

    fn forget(&self, id: u64) {
        let Some(sub) = self.lock_subs().remove(&id) else {
            return;
        };
        let mut jobs = lock(&self.jobs);
        if let Some(n) = jobs.get_mut(&sub.job) {
            *n -= 1;
            if *n == 0 {
                jobs.remove(&sub.job);
            }
        }
    }

    async fn read_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut poll = tokio::time::interval(self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                // A publisher wrote pieces of a job we serve, or a stream
                // opened.
                _ = self.wake.notified() => {}
                // The safety net: every stream, now and then.
                _ = poll.tick() => self.all_dirty.store(true, Ordering::SeqCst),
            }
            self.read_once().await;
        }
    }

    /// One read for the marked subscriptions, handed out in order.
    async fn read_once(&self) {
        let all = self.all_dirty.swap(false, Ordering::SeqCst);
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let cursors: Vec<(JobId, Cursor)> = {
            let subs = self.lock_subs();
            let mut lowest: HashMap<JobId, Cursor> = HashMap::new();
            for sub in subs.values().filter(|s| all || dirty.contains(&s.job)) {
                lowest
                    .entry(sub.job)
                    .and_modify(|c| *c = (*c).min(sub.cursor))
                    .or_insert(sub.cursor);
            }
            lowest.into_iter().collect()
        };
        if cursors.is_empty() {
            return;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let deltas = match super::read(&self.pool, &cursors).await {
            Ok(deltas) => deltas,
            Err(error) => {
                // Marked again: the next wake-up or poll reads them.
                lock(&self.dirty).extend(cursors.iter().map(|(job, _)| *job));
                tracing::debug!(%error, "cannot read streamed pieces; next notification or poll retries");
                return;
            }
        };
        if deltas.is_empty() {
            return;
        }
        let mut by_job: HashMap<JobId, Vec<&Delta>> = HashMap::new();
        for delta in &deltas {
            by_job.entry(delta.job_id).or_default().push(delta);
        }
        let more: Vec<JobId> = by_job
            .iter()
            .filter(|(_, d)| d.len() as i64 >= super::READ_LIMIT)
            .map(|(job, _)| *job)
            .collect();
        if !more.is_empty() {
            // A page was full: the rest at the next read, at once.
            lock(&self.dirty).extend(more);
            self.wake.notify_one();
        }
        let mut subs = self.lock_subs();
        for sub in subs.values_mut() {
            let Some(deltas) = by_job.get(&sub.job) else {
                continue;
            };
            for delta in deltas {
                let at = Cursor::after(delta);
                if at > sub.cursor {
                    sub.cursor = at;
                    // A closed receiver: the stream ended; its Drop
                    // removes the subscription.
                    let _ = sub.tx.send((*delta).clone());
                }
            }
        }
    }
}

/// An open stream's feed of pieces; dropping it ends the subscription.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Delta>,
}

impl Subscription {
    /// The next piece, in order.
    pub async fn recv(&mut self) -> Option<Delta> {
        self.rx.recv().await
    }

    /// The pieces not yet received, handed out now and read from the
    /// database: what a stream sends before its final event.
    pub async fn catch_up(&mut self, after: Cursor) -> sqlx::Result<Vec<Delta>> {
        let job = match self.hub.lock_subs().get(&self.id) {
            Some(sub) => sub.job,
            None => return Ok(Vec::new()),
        };
        let mut cursor = after;
        let mut out = Vec::new();
        while let Ok(delta) = self.rx.try_recv() {
            if Cursor::after(&delta) > cursor {
                cursor = Cursor::after(&delta);
                out.push(delta);
            }
        }
        out.extend(super::read_all(&self.hub.pool, job, cursor).await?);
        Ok(out)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.forget(self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: usable even if a holder panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
