//! The chat handler: runs chat jobs (kind [`CHAT_KIND`]).
//!
//! One attempt: parse the payload, load the conversation's history (through
//! the Redis cache when there is one, else through the [`HistoryLoader`],
//! which reads the histories of jobs that start together in one query),
//! send history + the user's message to the LLM, and turn the answer or the
//! error into an [`Outcome`]. The history is bounded by the history budget
//! (`SKIPJACK_HISTORY_MAX_TOKENS`, see [`super::budget`]): the system
//! prompt and the newest turns that fit, read as such from Postgres or the
//! cache, so neither the provider's context nor the worker's memory grows
//! with the conversation. No transaction is open while the LLM works:
//! the history read is a short statement on a pooled connection, given
//! back before the call.
//!
//! A job that asked for streaming (`stream` in its payload) calls the
//! provider in streaming mode and publishes the pieces through the
//! [`Publisher`], when the process has one; the reply stored at completion
//! is their concatenation.
//!
//! At a schema with [`store::MODEL_VERSION`], the turn also records the
//! model that wrote the reply.
//!
//! The turn is written by [`Handler::on_completed`], inside the transaction
//! that completes the batch and only for jobs that passed the lease fence:
//! the user message and the reply are appended together, or not at all, so
//! a failed or fenced-off job leaves no half turn. The cache is updated from
//! there too (after the append, in the background; see [`super::cache`]).
//!
//! Error mapping: a retryable [`LlmError`] (429, 5xx, timeout, connection)
//! becomes [`Outcome::Retry`] with the upstream's `Retry-After`; a permanent
//! one (other 4xx, malformed answer) fails the job at once. Either way the
//! error text, the provider's own message included, is kept on the job. A
//! call that found no provider budget ([`LlmError::Throttled`]) was not
//! sent: the job is snoozed ([`Outcome::Snooze`]) until budget frees, its
//! attempt not counted.

use super::budget::{self, DEFAULT_HISTORY_MAX_TOKENS};
use super::cache::{CacheWrite, HistoryCache};
use super::loader::HistoryLoader;
use super::store::{self, HistoryMessage, HistoryVersion, Turn};
use super::{ChatPayload, ChatResult, CHAT_KIND};
use crate::db::Schema;
use crate::ids::{ConversationId, JobId};
use crate::llm::cost::TokenMeter;
use crate::llm::{self, ChatMessage, ChatRequest, LlmError, Provider, Role};
use crate::metrics::metrics;
use crate::queue::{Outcome, TokenUsage};
use crate::stream::Publisher;
use crate::worker::{FinishedJob, Handler, JobContext};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Histories remembered for a completion that never came (lease lost, write
/// failed) are dropped after this long.
const STASH_MAX_AGE: Duration = Duration::from_secs(600);
/// Look for such leftovers every this many remembered histories.
const STASH_PRUNE_EVERY: u64 = 1024;

/// Runs chat jobs.
pub struct ChatHandler {
    /// For history reads through the cache; each holds a connection for one
    /// short statement.
    pool: PgPool,
    /// Coalesces the history reads of jobs that start together.
    loader: HistoryLoader,
    /// The LLM, shared by every job of the process.
    provider: Arc<dyn Provider>,
    /// The optional Redis history cache.
    cache: Option<HistoryCache>,
    /// Most estimated tokens of stored history sent per turn.
    history_max_tokens: u32,
    /// Counts tokens and estimated spend by provider and model.
    meter: TokenMeter,
    /// With a cache: the history each successful attempt used, so the
    /// completion can write history + turn to the cache without reading the
    /// history again.
    stash: Mutex<Stash>,
    /// The schema the process runs at: decides whether the model of a
    /// reply is recorded.
    schema: Schema,
    /// Publishes the pieces of replies whose job asked for streaming; none:
    /// every call waits for the whole reply.
    publisher: Option<Publisher>,
}

#[derive(Default)]
struct Stash {
    entries: HashMap<JobId, Stashed>,
    inserts: u64,
}

struct Stashed {
    version: HistoryVersion,
    messages: Arc<Vec<HistoryMessage>>,
    at: Instant,
}

impl ChatHandler {
    /// A handler that reads history from Postgres. Call it within a Tokio
    /// runtime: it starts the history loader's task.
    /// Tokens are counted under the model label `unknown` with no price
    /// until [`ChatHandler::with_meter`] says which model this is.
    pub fn new(pool: PgPool, provider: Arc<dyn Provider>) -> Self {
        ChatHandler {
            loader: HistoryLoader::spawn(pool.clone()),
            pool,
            meter: TokenMeter::unannounced(provider.name(), "unknown"),
            provider,
            cache: None,
            history_max_tokens: DEFAULT_HISTORY_MAX_TOKENS,
            stash: Mutex::default(),
            schema: Schema::current(),
            publisher: None,
        }
    }

    /// Streams the replies of jobs that ask for it through `publisher`.
    pub fn with_stream_publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Writes what `schema` allows (default: the newest schema this build
    /// knows).
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// Sends at most `max_tokens` estimated tokens of stored history per
    /// turn (see [`super::budget`]). Call it within a Tokio runtime: it
    /// starts a history loader for that budget.
    pub fn with_history_budget(mut self, max_tokens: u32) -> Self {
        self.history_max_tokens = max_tokens;
        self.loader = HistoryLoader::spawn_with_budget(self.pool.clone(), max_tokens);
        self
    }

    /// Counts tokens and cost with `meter` (`LlmConfig::meter`).
    pub fn with_meter(mut self, meter: TokenMeter) -> Self {
        self.meter = meter;
        self
    }

    /// Reads history through `cache`.
    pub fn with_cache(mut self, cache: HistoryCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache, if any (for tests and diagnostics).
    pub fn cache(&self) -> Option<&HistoryCache> {
        self.cache.as_ref()
    }

    fn lock_stash(&self) -> std::sync::MutexGuard<'_, Stash> {
        // A map of plain values: usable after a panic elsewhere.
        self.stash.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn load_history(
        &self,
        conversation: ConversationId,
    ) -> Result<(Arc<Vec<HistoryMessage>>, Option<HistoryVersion>), String> {
        match &self.cache {
            Some(cache) => {
                let loaded = cache
                    .load(&self.pool, conversation, self.history_max_tokens)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::trace!(%conversation, source = ?loaded.source, "history loaded");
                Ok((loaded.messages, Some(loaded.version)))
            }
            None => Ok((Arc::new(self.loader.history(conversation).await?), None)),
        }
    }

    fn remember(&self, job: JobId, version: HistoryVersion, messages: Arc<Vec<HistoryMessage>>) {
        let mut stash = self.lock_stash();
        stash.inserts += 1;
        if stash.inserts.is_multiple_of(STASH_PRUNE_EVERY) {
            stash.entries.retain(|_, s| s.at.elapsed() < STASH_MAX_AGE);
        }
        stash.entries.insert(
            job,
            Stashed {
                version,
                messages,
                at: Instant::now(),
            },
        );
    }
}

/// The history as LLM messages, with the user's message last.
fn request(history: &[HistoryMessage], message: &str) -> ChatRequest {
    let mut messages: Vec<ChatMessage> = Vec::with_capacity(history.len() + 1);
    for m in history {
        messages.push(ChatMessage {
            role: m.role,
            content: m.content.clone(),
        });
    }
    messages.push(ChatMessage::user(message));
    ChatRequest {
        system: None,
        messages,
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The outcome of a failed LLM call.
fn failed(error: &LlmError) -> Outcome {
    if let LlmError::Throttled { wait, .. } = error {
        // Not sent: back to the queue when budget frees, plus jitter so
        // that the jobs that found none together do not all come back
        // together; the attempt is not counted.
        let spread = (*wait).max(Duration::from_millis(250));
        return Outcome::Snooze {
            delay: *wait + spread.mul_f64(rand::random::<f64>()),
            reason: error.to_string(),
        };
    }
    metrics()
        .llm_errors
        .with_label_values(&[error.class().as_str()])
        .inc();
    match error {
        LlmError::Retryable { retry_after, .. } => Outcome::Retry {
            error: error.to_string(),
            retry_after: *retry_after,
        },
        LlmError::Permanent { .. } | LlmError::Throttled { .. } => Outcome::Failed {
            error: error.to_string(),
        },
    }
}

impl Handler for ChatHandler {
    fn kind(&self) -> &str {
        CHAT_KIND
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let job = &ctx.job;
        let payload = match ChatPayload::deserialize(&job.payload) {
            Ok(payload) => payload,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("invalid chat payload: {e}"),
                }
            }
        };
        let Some(conversation) = job.conversation_id else {
            return Outcome::Failed {
                error: "chat job has no conversation_id".into(),
            };
        };
        let (history, version) = match self.load_history(conversation).await {
            Ok(loaded) => loaded,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("loading the conversation history: {e}"),
                    retry_after: None,
                }
            }
        };
        let request = request(&history, &payload.message);

        let started = Instant::now();
        let answer = match self.publisher.as_ref().filter(|_| payload.stream) {
            Some(publisher) => {
                let writer = publisher.open(job.id, job.attempt);
                let on_delta = |piece: &str| writer.push(piece);
                let answer = self.provider.chat_stream(&request, &on_delta).await;
                if answer.is_ok() {
                    // Every piece is stored before the completion (and so
                    // the stream's final event) can be.
                    writer.finish().await;
                }
                answer
            }
            None => self.provider.chat(&request).await,
        };
        metrics()
            .llm_request
            .with_label_values(&[self.provider.name()])
            .observe(started.elapsed().as_secs_f64());
        let response = match answer {
            Ok(response) => response,
            Err(error) => return failed(&error),
        };

        self.meter.record(&response.usage);
        if let Some(version) = version {
            self.remember(job.id, version, history);
        }
        let result = ChatResult {
            response: response.content,
            model: response.model,
        };
        Outcome::Completed {
            // A struct of two strings always serializes.
            result: serde_json::to_value(&result).unwrap_or_default(),
            usage: Some(TokenUsage {
                input_tokens: to_i32(response.usage.input_tokens),
                output_tokens: to_i32(response.usage.output_tokens),
            }),
        }
    }

    async fn on_completed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> Result<(), sqlx::Error> {
        struct Done {
            job: JobId,
            conversation: ConversationId,
            user: String,
            reply: String,
            user_tokens: i32,
            reply_tokens: Option<i32>,
            model: String,
        }
        let mut done: Vec<Done> = Vec::with_capacity(jobs.len());
        for f in jobs {
            let Outcome::Completed { result, usage } = &f.outcome else {
                continue;
            };
            let Some(conversation) = f.job.conversation_id else {
                continue;
            };
            // Both parsed in handle() before it could complete the job.
            let (Ok(payload), Some(result)) = (
                ChatPayload::deserialize(&f.job.payload),
                ChatResult::read(result),
            ) else {
                tracing::error!(job_id = %f.job.id, "completed chat job without a readable payload or result: no turn appended");
                continue;
            };
            done.push(Done {
                job: f.job.id,
                conversation,
                user_tokens: to_i32(llm::estimate_tokens(&payload.message)),
                user: payload.message,
                reply: result.response,
                reply_tokens: usage.map(|u| u.output_tokens),
                model: result.model,
            });
        }
        let turns: Vec<Turn<'_>> = done
            .iter()
            .map(|d| Turn {
                conversation: d.conversation,
                job: d.job,
                user_message: &d.user,
                assistant_message: &d.reply,
                user_tokens: Some(d.user_tokens),
                assistant_tokens: d.reply_tokens,
            })
            .collect();
        let models: Option<Vec<&str>> = self
            .schema
            .has(store::MODEL_VERSION)
            .then(|| done.iter().map(|d| d.model.as_str()).collect());
        let appended = store::append_turns_with_models(tx, &turns, models.as_deref()).await?;

        let Some(cache) = &self.cache else {
            return Ok(());
        };
        // The cache gets history + turn when the attempt's history was the
        // one the turn was appended to (always, unless the conversation was
        // changed behind the worker's back); otherwise the key is dropped.
        // Written in the background before or after the commit: either is
        // safe because reads are validated (see the cache module).
        let after: HashMap<ConversationId, (HistoryVersion, HistoryVersion)> = appended
            .iter()
            .map(|a| (a.conversation, (a.before, a.after)))
            .collect();
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        {
            let mut stash = self.lock_stash();
            for d in &done {
                let used = stash.entries.remove(&d.job);
                match (used, after.get(&d.conversation)) {
                    (Some(used), Some((before, after))) if used.version == *before => {
                        // The window the turn was answered with, plus the
                        // turn, cut again: what the database would read now.
                        let mut messages = Vec::with_capacity(used.messages.len() + 2);
                        messages.extend(used.messages.iter().cloned());
                        messages.push(HistoryMessage {
                            role: Role::User,
                            content: d.user.clone(),
                        });
                        messages.push(HistoryMessage {
                            role: Role::Assistant,
                            content: d.reply.clone(),
                        });
                        puts.push(CacheWrite {
                            conversation: d.conversation,
                            version: *after,
                            messages: Arc::new(budget::trim(&messages, self.history_max_tokens)),
                            max_tokens: self.history_max_tokens,
                        });
                    }
                    _ => deletes.push(d.conversation),
                }
            }
        }
        cache.write_and_delete(puts, deletes);
        Ok(())
    }
}
