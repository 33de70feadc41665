//! The API replica's side: one reader for all the streams the process
//! serves.
//!
//! Each open stream holds a [`Subscription`]: its job and its cursor. On
//! every NOTIFY of [`super::STREAM_CHANNEL`] (a publisher wrote), and every
//! [`HubConfig::poll`] as the safety net for a lost notification or a
//! listener still connecting, the hub reads what is new for every
//! subscription in one statement and hands each its pieces in order. A
//! burst of notifications while a read runs costs one more read, not one
//! per notification.

use super::{Cursor, Delta};
use crate::ids::JobId;
use crate::queue::notify::{self, ListenerConfig};
use sqlx::PgPool;
use std::collections::HashMap;
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
            next_id: AtomicU64::new(0),
            wake: Notify::new(),
            reads: AtomicU64::new(0),
        })
    }

    /// Starts the listener and the reader; both end at `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let waker = self.clone();
        let listener = notify::spawn_listener_with(
            self.listen_pool.clone(),
            vec![super::STREAM_CHANNEL],
            self.config.listener.clone(),
            // A write, a (re)connected listener: either way, look.
            move |_| waker.wake.notify_one(),
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
        // Plain data: usable even if a holder panicked.
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let idle = self.lock_subs().is_empty();
            tokio::select! {
                _ = stop.cancelled() => return,
                // A publisher wrote, or a stream opened.
                _ = self.wake.notified() => {}
                // The safety net, while anyone listens.
                _ = tokio::time::sleep(self.config.poll), if !idle => {}
            }
            self.read_once().await;
        }
    }

    /// One read for every subscription, handed out in order.
    async fn read_once(&self) {
        let cursors: Vec<(JobId, Cursor)> = {
            let subs = self.lock_subs();
            let mut lowest: HashMap<JobId, Cursor> = HashMap::new();
            for sub in subs.values() {
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
        out.extend(super::read(&self.hub.pool, &[(job, cursor)]).await?);
        Ok(out)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.lock_subs().remove(&self.id);
    }
}
