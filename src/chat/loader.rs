//! The history loader: coalesces the history reads of jobs that start
//! together into one query.
//!
//! A worker with 1,000 slots claims up to 500 jobs in one statement, and
//! they all start at once; read one by one, their histories would be 500
//! statements queueing for a couple of dozen pooled connections (and
//! competing with the claims and completions for them). The loader takes
//! every request that is waiting, reads all their histories with one
//! `conversation_id = ANY(…)` query, and answers each. A lone request is
//! read at once, alone, so an idle worker pays no delay; under a burst the
//! requests that arrive while a query runs form the next one. At most
//! `MAX_QUERIES` queries run at a time, so the loader never holds more
//! than that many connections.
//!
//! Each history is read under the process's budget ([`super::history_budget`]):
//! the query reads only the messages the LLM will be sent, so a job holds
//! at most that much history however long its conversation is.

use super::history_budget::DEFAULT_HISTORY_MAX_TOKENS;
use super::store::{self, HistoryMessage};
use crate::ids::ConversationId;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Most conversations read by one query.
const MAX_BATCH: usize = 500;
/// Most queries in flight at once.
const MAX_QUERIES: usize = 4;

type Reply = oneshot::Sender<Result<Vec<HistoryMessage>, String>>;

/// A handle to the loader task; the task ends when every handle is gone.
#[derive(Clone)]
pub struct HistoryLoader {
    requests: mpsc::UnboundedSender<(ConversationId, Reply)>,
    /// Queries run so far, to see the coalescing at work.
    queries: Arc<AtomicU64>,
}

impl HistoryLoader {
    /// Starts the loader task on the current Tokio runtime, with the
    /// default history budget.
    pub fn spawn(pool: PgPool) -> Self {
        Self::spawn_with_budget(pool, DEFAULT_HISTORY_MAX_TOKENS)
    }

    /// Starts the loader task, reading histories under a budget of
    /// `max_tokens` estimated tokens each.
    pub fn spawn_with_budget(pool: PgPool, max_tokens: u32) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let queries = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(pool, max_tokens, rx, queries.clone()));
        HistoryLoader { requests, queries }
    }

    /// Queries run so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The conversation's messages the LLM is sent (under the budget), in
    /// order. The error is the database's,
    /// as text (one failed query answers all its requests).
    pub async fn history(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<HistoryMessage>, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((conversation, reply))
            .map_err(|_| "history loader stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "history loader stopped".to_owned())?
    }
}

async fn run(
    pool: PgPool,
    max_tokens: u32,
    mut rx: mpsc::UnboundedReceiver<(ConversationId, Reply)>,
    count: Arc<AtomicU64>,
) {
    let mut queries = JoinSet::new();
    let mut waiting: Vec<(ConversationId, Reply)> = Vec::new();
    let mut open = true;
    loop {
        take_waiting(&mut rx, &mut waiting, &mut open);
        if !waiting.is_empty() && queries.len() < MAX_QUERIES {
            // The jobs of one claim start together: let those about to ask
            // run first, so that they share this query.
            tokio::task::yield_now().await;
            take_waiting(&mut rx, &mut waiting, &mut open);
            let take = waiting.len().min(MAX_BATCH);
            let batch: Vec<(ConversationId, Reply)> = waiting.drain(..take).collect();
            count.fetch_add(1, Ordering::Relaxed);
            queries.spawn(load(pool.clone(), max_tokens, batch));
            continue;
        }
        if !open && waiting.is_empty() && queries.is_empty() {
            return;
        }
        tokio::select! {
            // A new request (only while there is room to hold it).
            request = rx.recv(), if open && waiting.len() < MAX_BATCH * MAX_QUERIES => match request {
                Some(request) => waiting.push(request),
                None => open = false,
            },
            // A query finished: room for the next one.
            Some(_) = queries.join_next(), if !queries.is_empty() => {}
        }
    }
}

/// Takes the requests already waiting, as many as the loader holds; `open`
/// turns false once every handle is gone.
fn take_waiting(
    rx: &mut mpsc::UnboundedReceiver<(ConversationId, Reply)>,
    waiting: &mut Vec<(ConversationId, Reply)>,
    open: &mut bool,
) {
    while *open && waiting.len() < MAX_BATCH * MAX_QUERIES {
        match rx.try_recv() {
            Ok(request) => waiting.push(request),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => *open = false,
        }
    }
}

/// The histories of `conversations`, read with the query's generic plan.
/// Postgres would otherwise plan it afresh for every batch (a custom plan
/// looks cheaper for an array of ids whose length only it knows), and
/// making that plan costs more than running it: about 0.5 ms of the
/// server's CPU a batch (BENCHMARKS.md). The generic plan probes by key
/// whatever the statistics say: tests/sql_files.rs checks it on a fresh
/// database.
async fn read(
    pool: &PgPool,
    conversations: &[ConversationId],
    max_tokens: u32,
) -> Result<HashMap<ConversationId, store::HistoryWindow>, crate::queue::QueueError> {
    let mut tx = crate::queue::begin_generic_plans(pool).await?;
    let found = store::histories(&mut *tx, conversations, max_tokens).await?;
    tx.commit().await?;
    Ok(found)
}

/// One query for the whole batch; each request gets its own history.
async fn load(pool: PgPool, max_tokens: u32, batch: Vec<(ConversationId, Reply)>) {
    let mut conversations: Vec<ConversationId> = batch.iter().map(|(c, _)| *c).collect();
    conversations.sort_unstable();
    conversations.dedup();
    match read(&pool, &conversations, max_tokens).await {
        Ok(mut found) => {
            // A conversation has one job running at a time, so a batch names
            // each at most once; a repeat (a test calling directly) gets a
            // copy.
            let mut counts: HashMap<ConversationId, usize> = HashMap::new();
            for (c, _) in &batch {
                *counts.entry(*c).or_default() += 1;
            }
            for (conversation, reply) in batch {
                let left = counts.entry(conversation).or_default();
                *left -= 1;
                let history = if *left == 0 {
                    found.remove(&conversation).unwrap_or_default().messages
                } else {
                    found
                        .get(&conversation)
                        .map(|w| w.messages.clone())
                        .unwrap_or_default()
                };
                let _ = reply.send(Ok(history));
            }
        }
        Err(error) => {
            let error = error.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
