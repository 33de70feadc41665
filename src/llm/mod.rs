//! LLM providers: the one seam between the job system and a language model.
//!
//! Workers hand a [`ChatRequest`] (the conversation history with the current
//! user message last) to an `Arc<dyn Provider>` and get back a
//! [`ChatResponse`] or an [`LlmError`] that already says whether retrying can
//! help. Everything behind that seam is chosen once at start-up by
//! [`build_provider`] from an [`LlmConfig`]:
//!
//! - [`simulated`]: no network, a latency distribution and a failure rate, and
//!   a deterministic `echo(N): MESSAGE` reply that lets tests and load
//!   generators check that no history was lost, duplicated or reordered. It is
//!   the default so the whole system runs on a laptop without a key.
//! - [`anthropic`]: the Anthropic Messages API.
//! - [`openai`]: any OpenAI-compatible chat completions server (OpenAI, vLLM,
//!   Ollama, llama.cpp server, OpenRouter, ...).
//!
//! The HTTP providers share one pooled `reqwest::Client` and one error
//! classification ([`http`]); several upstream endpoints (base URLs and/or
//! keys) are balanced and ejected when unhealthy by [`pool`]; an optional
//! per-process request rate cap wraps the result ([`limit`]); requests and
//! tokens per minute shared by every worker process are held by [`budget`].
//!
//! Why the error classes matter: the queue retries `Retryable` errors with
//! backoff (honouring `retry_after` when the upstream gave one) and fails a job
//! at once on `Permanent` ones; the class is also the `class` label of the
//! error metric, so it must stay a small closed set ([`ErrorClass::as_str`]).

pub mod anthropic;
pub mod budget;
pub mod cost;
mod error;
pub mod http;
pub mod limit;
pub mod openai;
pub mod pool;
pub mod settings;
pub mod simulated;
mod sse;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use pool::EndpointStats;
pub use settings::{
    BudgetLimits, EndpointSpec, LlmConfig, ModelSettings, ProviderKind, Secret, Strategy,
    DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_ANTHROPIC_MODEL, DEFAULT_OPENAI_BASE_URL,
    DEFAULT_OPENAI_MODEL,
};

/// Who wrote a message: the one type for a role everywhere (the model's
/// context, the `messages.role` column, the history cache, the API).
/// Serialized lowercase because that is what both the Anthropic and the
/// OpenAI wire formats (and the column's check constraint) use; stored as
/// the same text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model; providers that have a separate system
    /// field (Anthropic) move these out of the message list.
    System,
    /// A turn written by the end user.
    User,
    /// A turn written by the model.
    Assistant,
}

impl Role {
    /// The wire/database spelling, identical to the serde one.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// The role spelt `s` ([`Role::as_str`]'s inverse).
    pub fn parse(s: &str) -> Option<Role> {
        [Role::System, Role::User, Role::Assistant]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// A role is text in Postgres (`messages.role`), not a type of its own.
impl sqlx::Type<sqlx::Postgres> for Role {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Role {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Role::parse(s).ok_or_else(|| format!("unknown message role {s:?}").into())
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Role {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

/// One message of the context sent to the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user turn; a convenience for callers and tests.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant turn; a convenience for callers and tests.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// What a worker asks the model: the conversation so far and the current user
/// message, which must be the LAST element of `messages`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// A system prompt for this request; when `None` the provider falls back
    /// to `SKIPJACK_LLM_SYSTEM_PROMPT`, if any.
    pub system: Option<String>,
    /// History in order, then the current user message.
    pub messages: Vec<ChatMessage>,
}

impl ChatRequest {
    /// The system prompt to send: the request's own, else `default`
    /// (`SKIPJACK_LLM_SYSTEM_PROMPT`); empty strings count as absent.
    pub fn effective_system<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.system
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(default.filter(|s| !s.is_empty()))
    }
}

/// Where a streaming call puts each piece of the reply as it arrives
/// ([`Provider::chat_stream`]). A plain callback: it must not block.
pub type OnDelta<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Token accounting for one call, stored with the job for cost auditing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens the model read (prompt), as reported or estimated.
    pub input_tokens: u32,
    /// Tokens the model wrote (completion), as reported or estimated.
    pub output_tokens: u32,
}

/// A successful model answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The assistant's text.
    pub content: String,
    /// Token usage (reported by the upstream, or estimated when it did not say).
    pub usage: Usage,
    /// The model that actually answered (upstreams may resolve aliases).
    pub model: String,
}

/// Why a call failed, as a small closed set: it is the `class` label of the
/// LLM error metric, so it must never carry ids or free text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// HTTP 429: the upstream asked us to slow down.
    RateLimited,
    /// HTTP 5xx (including Anthropic's 529 "overloaded").
    Server,
    /// The request (or reading its response) took longer than the configured
    /// timeout.
    Timeout,
    /// The connection could not be made or broke before an answer arrived.
    Connect,
    /// HTTP 4xx other than 408/429: the request itself is wrong (bad key,
    /// unknown model, context too long); retrying cannot help.
    Client,
    /// A success status whose body we could not understand.
    Malformed,
    /// A failure injected by the simulated provider.
    Simulated,
}

impl ErrorClass {
    /// Every class (the metric's label values).
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::RateLimited,
        ErrorClass::Server,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Client,
        ErrorClass::Malformed,
        ErrorClass::Simulated,
    ];

    /// The metric label value for this class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Server => "server",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Client => "client",
            ErrorClass::Malformed => "malformed",
            ErrorClass::Simulated => "simulated",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed LLM call, split by what the queue should do about it.
///
/// Messages keep the upstream's own error text (never a key), so an operator
/// reading `job_history.error` sees why the provider refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Worth trying again later: rate limits, server errors, timeouts,
    /// connection failures, simulated failures.
    #[error("{class} (retryable): {message}")]
    Retryable {
        /// Why it failed.
        class: ErrorClass,
        /// Human-readable detail, including the upstream's message.
        message: String,
        /// How long the upstream asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// Retrying the same request cannot succeed: the job should fail now.
    #[error("{class} (permanent): {message}")]
    Permanent {
        /// Why it failed.
        class: ErrorClass,
        /// Human-readable detail, including the upstream's message.
        message: String,
    },
    /// Not sent: no endpoint has provider budget ([`budget`]) for about
    /// `wait`. The job goes back to the queue for that long without using
    /// an attempt; its class is `rate_limited`.
    #[error("throttled: {message}")]
    Throttled {
        /// How long until budget frees.
        wait: Duration,
        /// Human-readable detail.
        message: String,
    },
}

impl LlmError {
    /// Shorthand for a retryable error without `Retry-After`.
    pub fn retryable(class: ErrorClass, message: impl Into<String>) -> Self {
        LlmError::Retryable {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Shorthand for a permanent error.
    pub fn permanent(class: ErrorClass, message: impl Into<String>) -> Self {
        LlmError::Permanent {
            class,
            message: message.into(),
        }
    }

    /// Whether the queue should schedule another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::Retryable { .. } | LlmError::Throttled { .. }
        )
    }

    /// The delay the upstream asked for, if any; the queue uses it as a lower
    /// bound for its backoff.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Retryable { retry_after, .. } => *retry_after,
            LlmError::Permanent { .. } => None,
            LlmError::Throttled { wait, .. } => Some(*wait),
        }
    }

    /// The error class (metric label).
    pub fn class(&self) -> ErrorClass {
        match self {
            LlmError::Retryable { class, .. } | LlmError::Permanent { class, .. } => *class,
            LlmError::Throttled { .. } => ErrorClass::RateLimited,
        }
    }

    /// The human-readable detail.
    pub fn message(&self) -> &str {
        match self {
            LlmError::Retryable { message, .. }
            | LlmError::Permanent { message, .. }
            | LlmError::Throttled { message, .. } => message,
        }
    }
}

/// A language model the workers can call.
///
/// Object-safe (`Arc<dyn Provider>`) so the provider is chosen at run time
/// from configuration; `chat` returns a boxed future for the same reason.
/// Implementations must be cheap to call concurrently: a worker process keeps
/// hundreds of calls in flight on one instance.
pub trait Provider: Send + Sync + 'static {
    /// A short static name (`simulated`, `anthropic`, `openai`) for logs and
    /// metric labels.
    fn name(&self) -> &'static str;

    /// Send one chat request and wait for the answer.
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;

    /// Send one chat request in streaming mode: `on_delta` gets each piece
    /// of the reply as it arrives, in order, and the answer's `content` is
    /// their concatenation. Pieces already given stay given when the call
    /// fails later: the caller treats them as an interrupted attempt.
    ///
    /// The default calls [`Provider::chat`] and gives the whole reply as one
    /// piece, for providers that cannot stream.
    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let response = self.chat(req).await?;
            on_delta(&response.content);
            Ok(response)
        })
    }

    /// Per-upstream-endpoint counters, for tests, logs and metrics. Providers
    /// without upstream endpoints (the simulated one) report none. Never
    /// contains keys.
    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        Vec::new()
    }
}

/// Build the provider described by `cfg`: the simulated one, or an HTTP
/// provider behind an upstream pool, wrapped in a rate cap when
/// `max_rps > 0`.
///
/// Called once per process; it also builds the one shared `reqwest::Client`
/// every endpoint reuses (pooled keep-alive connections).
pub fn build_provider(cfg: &LlmConfig) -> Result<Arc<dyn Provider>, ConfigError> {
    build_provider_with_budget(cfg, None)
}

/// [`build_provider`] whose upstream pool reserves every call from `budget`
/// (the provider budgets shared by every worker process); `None`: no
/// budgets.
pub fn build_provider_with_budget(
    cfg: &LlmConfig,
    budget: Option<budget::Budget>,
) -> Result<Arc<dyn Provider>, ConfigError> {
    cfg.validate()?;
    let inner: Arc<dyn Provider> = match cfg.provider {
        ProviderKind::Simulated => Arc::new(simulated::SimulatedProvider::from_config(cfg)),
        ProviderKind::Anthropic | ProviderKind::Openai => {
            let pool = pool::Pool::from_config(cfg)?;
            Arc::new(match budget {
                Some(budget) => pool.with_budget(budget, cfg.model_settings()),
                None => pool,
            })
        }
    };
    Ok(limit::wrap(inner, cfg.max_rps))
}

/// A rough token count for text whose real count we do not know: about four
/// characters per token, at least one. Used by the simulated provider and when
/// an OpenAI-compatible server omits `usage`.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

/// Estimated usage of a request/answer pair, counting every message (and the
/// system prompt) at least one token.
pub fn estimate_usage(system: Option<&str>, messages: &[ChatMessage], answer: &str) -> Usage {
    let input = messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .chain(system.map(estimate_tokens))
        .fold(0u32, u32::saturating_add);
    Usage {
        input_tokens: input.max(1),
        output_tokens: estimate_tokens(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClass;

    #[test]
    fn error_classes_are_the_metric_labels() {
        let classes: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(classes, crate::metrics::LLM_ERROR_CLASSES);
    }
}
