//! The chat handler: runs chat jobs (kind [`CHAT_KIND`]).
//!
//! One attempt: parse the payload, load the conversation's history (through
//! the Redis cache when there is one, else through the [`HistoryLoader`],
//! which reads the histories of jobs that start together in one query),
//! send history + the user's message to the LLM, and turn the answer or the
//! error into an [`Outcome`]. The history is bounded by the history budget
//! (`SKIPJACK_HISTORY_MAX_TOKENS`, see [`super::history_budget`]): the system
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

use super::cache::{CacheWrite, HistoryCache};
use super::history_budget::{self, DEFAULT_HISTORY_MAX_TOKENS};
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
use crate::text::without_nul;
use crate::worker::{FinishedJob, Handler, JobContext};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an answered attempt hands to its completion (through
/// [`JobContext::keep`]), so the turn is written without parsing the payload
/// or the result again.
struct Answered {
    /// The user's message.
    message: String,
    /// The reply.
    reply: String,
    /// The model that wrote it.
    model: String,
    /// With a cache: the history the attempt was answered with, so the
    /// completion can write history + turn to the cache without reading the
    /// history again.
    history: Option<(HistoryVersion, Arc<Vec<HistoryMessage>>)>,
}

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
    /// The schema the process runs at: decides whether the model of a
    /// reply is recorded.
    schema: Schema,
    /// Publishes the pieces of replies whose job asked for streaming; none:
    /// every call waits for the whole reply.
    publisher: Option<Publisher>,
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
    /// turn (see [`super::history_budget`]). Call it within a Tokio runtime: it
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
        // What Postgres text cannot hold (NUL) goes now: the turn is written
        // from this, not from the stored result.
        let result = ChatResult {
            response: without_nul(&response.content).into_owned(),
            model: without_nul(&response.model).into_owned(),
        };
        let outcome = Outcome::Completed {
            // A struct of two strings always serializes.
            result: serde_json::to_value(&result).unwrap_or_default(),
            usage: Some(TokenUsage {
                input_tokens: to_i32(response.usage.input_tokens),
                output_tokens: to_i32(response.usage.output_tokens),
            }),
        };
        ctx.keep(Answered {
            message: payload.message,
            reply: result.response,
            model: result.model,
            history: version.map(|v| (v, history)),
        });
        outcome
    }

    async fn on_completed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> Result<(), sqlx::Error> {
        let mut done: Vec<(JobId, ConversationId, &Answered, Option<i32>)> =
            Vec::with_capacity(jobs.len());
        for f in jobs {
            let Outcome::Completed { usage, .. } = &f.outcome else {
                continue;
            };
            let Some(conversation) = f.job.conversation_id else {
                continue;
            };
            // handle() keeps an Answered with every completion it returns.
            let Some(answered) = f.kept::<Answered>() else {
                tracing::error!(job_id = %f.job.id, "completed chat job without its answer: no turn appended");
                continue;
            };
            done.push((
                f.job.id,
                conversation,
                answered,
                usage.map(|u| u.output_tokens),
            ));
        }
        let turns: Vec<Turn<'_>> = done
            .iter()
            .map(|&(job, conversation, a, reply_tokens)| Turn {
                conversation,
                job,
                user_message: &a.message,
                assistant_message: &a.reply,
                user_tokens: Some(to_i32(llm::estimate_tokens(&a.message))),
                assistant_tokens: reply_tokens,
            })
            .collect();
        let models: Option<Vec<&str>> = self
            .schema
            .has(store::MODEL_VERSION)
            .then(|| done.iter().map(|(_, _, a, _)| a.model.as_str()).collect());
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
        for &(_, conversation, a, _) in &done {
            match (&a.history, after.get(&conversation)) {
                (Some((used, messages)), Some((before, after))) if used == before => {
                    // The window the turn was answered with, plus the
                    // turn, cut again: what the database would read now.
                    let mut window = Vec::with_capacity(messages.len() + 2);
                    window.extend(messages.iter().cloned());
                    window.push(HistoryMessage {
                        role: Role::User,
                        content: a.message.clone(),
                    });
                    window.push(HistoryMessage {
                        role: Role::Assistant,
                        content: a.reply.clone(),
                    });
                    puts.push(CacheWrite {
                        conversation,
                        version: *after,
                        messages: Arc::new(history_budget::trim(&window, self.history_max_tokens)),
                        max_tokens: self.history_max_tokens,
                    });
                }
                _ => deletes.push(conversation),
            }
        }
        cache.write_and_delete(puts, deletes);
        Ok(())
    }
}
