//! The worker's side: buffers the pieces of every reply the process is
//! streaming and writes them all together, every flush interval, in one
//! statement.
//!
//! A handler opens a [`StreamWriter`] for its attempt, pushes pieces as the
//! provider sends them (a push only appends to a buffer under a short
//! lock; an attempt's first piece is written at once, without waiting for
//! the interval, as the reader has waited longest for it), and [`StreamWriter::finish`]es it before it reports the outcome:
//! finishing flushes at once (together with whatever else is pending) and
//! waits until the attempt's last piece is stored, so the completion, and
//! with it the stream's final event, never overtakes a piece.
//!
//! A flush that fails is sent again as it was at the next one (the
//! statement ignores pieces already stored), ahead of the newer pieces, so
//! a database hiccup delays a stream but leaves no gap in it. A writer
//! dropped without finishing (the attempt was cancelled, or the call
//! failed) discards its unsent text: the next attempt starts over anyway.

use super::Delta;
use crate::ids::JobId;
use crate::text::without_nul;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a publisher writes.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Pieces are collected this long before they are written
    /// (`SKIPJACK_STREAM_FLUSH_MS`): shorter is smoother for the reader,
    /// longer is fewer statements.
    pub flush_interval: Duration,
    /// Longest [`StreamWriter::finish`] waits for its pieces to be stored
    /// (the database may be away) before the outcome is reported anyway.
    pub finish_timeout: Duration,
    /// Pieces older than this are pruned (`SKIPJACK_STREAM_RETENTION_SECONDS`);
    /// a client reconnecting later gets the final event or the pieces
    /// still there.
    pub retention: Duration,
    /// Time between two prunes.
    pub prune_every: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            flush_interval: Duration::from_millis(50),
            finish_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(600),
            prune_every: Duration::from_secs(60),
        }
    }
}

/// What is waiting to be written for one attempt.
#[derive(Default)]
struct Pending {
    /// Text received since the last flush.
    text: String,
    /// Seq of the next piece written.
    next_seq: i32,
    /// The writer finished: drop the entry once its text is written.
    finishing: bool,
}

struct Inner {
    pool: PgPool,
    config: PublisherConfig,
    /// Per attempt, the text not yet taken by a flush.
    pending: Mutex<HashMap<(JobId, i32), Pending>>,
    /// Pieces taken by a flush that failed: sent first next time.
    unsent: Mutex<Vec<Delta>>,
    /// Rung by the first push after a flush, and by finishing writers.
    kick: Notify,
    /// A writer is finishing: flush without waiting for the interval.
    urgent: Notify,
    /// Bumped after every flush, successful or not: finishing writers look
    /// again.
    flushed: watch::Sender<u64>,
}

/// Buffers and writes the pieces of the replies this process streams.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts the flushing (and pruning) task; it writes what is pending and
    /// ends at `stop`.
    pub fn spawn(
        pool: PgPool,
        config: PublisherConfig,
        stop: CancellationToken,
    ) -> (Publisher, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            pool,
            config,
            pending: Mutex::default(),
            unsent: Mutex::default(),
            kick: Notify::new(),
            urgent: Notify::new(),
            flushed: watch::channel(0).0,
        });
        let task = tokio::spawn(run(inner.clone(), stop));
        (Publisher { inner }, task)
    }

    /// A writer for one attempt of `job`.
    pub fn open(&self, job: JobId, attempt: i32) -> StreamWriter {
        let key = (job, attempt);
        lock(&self.inner.pending).insert(
            key,
            Pending {
                next_seq: 1,
                ..Pending::default()
            },
        );
        StreamWriter {
            inner: self.inner.clone(),
            key,
            finished: false,
        }
    }
}

/// The pieces of one attempt's reply.
pub struct StreamWriter {
    inner: Arc<Inner>,
    key: (JobId, i32),
    finished: bool,
}

impl StreamWriter {
    /// Adds a piece (text Postgres cannot store is replaced as in the
    /// stored reply, so the two stay equal).
    pub fn push(&self, piece: &str) {
        let (first_since_flush, first_of_attempt) = {
            let mut pending = lock(&self.inner.pending);
            let Some(entry) = pending.get_mut(&self.key) else {
                return;
            };
            let first = entry.text.is_empty();
            entry.text.push_str(&without_nul(piece));
            (first, first && entry.next_seq == 1)
        };
        if first_of_attempt {
            // The reader has waited for the whole queue time and the
            // model's first token already: no collecting on top of that.
            self.inner.urgent.notify_one();
        }
        if first_since_flush {
            self.inner.kick.notify_one();
        }
    }

    /// Writes what is left now and waits until it is stored (at most the
    /// finish timeout).
    pub async fn finish(mut self) {
        self.finished = true;
        let mut flushed = self.inner.flushed.subscribe();
        // Even with no text left, a flush in progress may hold the last
        // piece: the entry goes once a flush that started after this
        // succeeds.
        match lock(&self.inner.pending).get_mut(&self.key) {
            Some(entry) => entry.finishing = true,
            None => return,
        }
        self.inner.urgent.notify_one();
        self.inner.kick.notify_one();
        let stored = async {
            loop {
                if !lock(&self.inner.pending).contains_key(&self.key) {
                    return;
                }
                if flushed.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(self.inner.config.finish_timeout, stored)
            .await
            .is_err()
        {
            lock(&self.inner.pending).remove(&self.key);
            tracing::warn!(job_id = %self.key.0, "the last pieces of a streamed reply could not be stored in time");
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.inner.pending).remove(&self.key);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: usable even if a holder panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flushes whenever something is pending, at most once per flush interval
/// (at once for a finishing writer); prunes now and then.
async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let mut prune = tokio::time::interval(inner.config.prune_every);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Shutting down: write what is left below.
            _ = stop.cancelled() => break,
            // Something to write.
            _ = inner.kick.notified() => {}
            // Old pieces to drop.
            _ = prune.tick() => {
                prune_old(&inner).await;
                continue;
            }
        }
        tokio::select! {
            // Collect pieces for one interval...
            _ = tokio::time::sleep(inner.config.flush_interval) => {}
            // ...unless a writer waits for its last ones.
            _ = inner.urgent.notified() => {}
            _ = stop.cancelled() => {}
        }
        flush(&inner).await;
    }
    flush(&inner).await;
}

async fn flush(inner: &Inner) {
    let mut batch = std::mem::take(&mut *lock(&inner.unsent));
    let finished: Vec<(JobId, i32)> = {
        let mut pending = lock(&inner.pending);
        let mut finished = Vec::new();
        for (key, entry) in pending.iter_mut() {
            if !entry.text.is_empty() {
                batch.push(Delta {
                    job_id: key.0,
                    attempt: key.1,
                    seq: entry.next_seq,
                    text: std::mem::take(&mut entry.text),
                });
                entry.next_seq += 1;
            }
            if entry.finishing {
                finished.push(*key);
            }
        }
        finished
    };
    if !batch.is_empty() {
        match super::write(&inner.pool, &batch).await {
            Ok(_) => {
                crate::metrics::metrics()
                    .stream_deltas_written
                    .inc_by(batch.len() as u64);
            }
            Err(error) => {
                tracing::warn!(%error, pieces = batch.len(), "cannot write streamed pieces; will retry");
                lock(&inner.unsent).splice(0..0, batch);
                inner.flushed.send_modify(|n| *n += 1);
                inner.kick.notify_one();
                return;
            }
        }
    }
    {
        let mut pending = lock(&inner.pending);
        for key in finished {
            if pending.get(&key).is_some_and(|e| e.text.is_empty()) {
                pending.remove(&key);
            }
        }
    }
    inner.flushed.send_modify(|n| *n += 1);
}

async fn prune_old(inner: &Inner) {
    let Ok(retention) = chrono::Duration::from_std(inner.config.retention) else {
        return;
    };
    match super::prune(&inner.pool, chrono::Utc::now() - retention, 5000).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "old streamed pieces pruned"),
        Err(error) => tracing::debug!(%error, "cannot prune streamed pieces"),
    }
}

/// How a worker publishes streamed replies, flattened into the worker's
/// arguments .
#[derive(clap::Args, Clone, Debug)]
pub struct StreamArgs {
    /// Pieces of streamed replies are collected this long, then written for
    /// all jobs in one statement: lower is smoother for readers, higher is
    /// fewer statements.
    #[arg(long, env = "SKIPJACK_STREAM_FLUSH_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub stream_flush_ms: u64,
    /// Pieces of streamed replies are kept this long for clients that
    /// reconnect; set it above the longest LLM call.
    #[arg(long, env = "SKIPJACK_STREAM_RETENTION_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub stream_retention_seconds: u64,
}

impl StreamArgs {
    /// The publisher's settings.
    pub fn publisher_config(&self) -> PublisherConfig {
        PublisherConfig {
            flush_interval: Duration::from_millis(self.stream_flush_ms),
            retention: Duration::from_secs(self.stream_retention_seconds),
            ..Default::default()
        }
    }
}
