//! Settings of the chat worker besides the LLM's own ([`crate::llm::LlmConfig`]):
//! the history budget and the optional Redis history cache. Every setting is
//! a `--flag` and an environment variable; `REDIS_URL` unset means no cache.

use super::budget::DEFAULT_HISTORY_MAX_TOKENS;
use super::cache::CacheConfig;
use std::time::Duration;

/// How much history a chat turn sends, flattened into the worker's arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct HistoryArgs {
    /// Most estimated tokens (a token per 4 characters) of stored history
    /// sent to the LLM per turn: the conversation's leading system messages,
    /// then its newest turns that fit. The new user message is sent on top.
    /// Set it below the model's context window minus the longest reply and
    /// the longest user message.
    #[arg(long, env = "SKIPJACK_HISTORY_MAX_TOKENS", default_value_t = DEFAULT_HISTORY_MAX_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub history_max_tokens: u32,
}

/// The history cache settings, flattened into the worker's arguments.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// Redis URL of the conversation history cache, e.g.
    /// redis://127.0.0.1:6379/0, or rediss://… for TLS. Unset: history is
    /// read from Postgres only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate (for a
    /// rediss:// URL). Unset: the built-in public roots.
    #[arg(long, env = "SKIPJACK_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// How long a cached history lives without being read or written.
    #[arg(long, env = "SKIPJACK_CACHE_TTL_SECONDS", default_value_t = 3600)]
    pub cache_ttl_seconds: u64,
    /// Longest a Redis operation may take before the worker gives up on it
    /// and uses Postgres: a dead Redis must never stall jobs.
    #[arg(long, env = "SKIPJACK_CACHE_TIMEOUT_MS", default_value_t = 100)]
    pub cache_timeout_ms: u64,
    /// After a Redis failure, how long to go straight to Postgres before
    /// trying Redis again.
    #[arg(long, env = "SKIPJACK_CACHE_RETRY_MS", default_value_t = 1000)]
    pub cache_retry_ms: u64,
    /// Redis connections in this process's pool (each is multiplexed).
    #[arg(long, env = "SKIPJACK_CACHE_POOL_SIZE", default_value_t = 8)]
    pub cache_pool_size: usize,
    /// Prefix of the cache keys (one key per conversation), so several
    /// deployments can share one Redis.
    #[arg(
        long,
        env = "SKIPJACK_CACHE_KEY_PREFIX",
        default_value = "skipjack:history:"
    )]
    pub cache_key_prefix: String,
}

impl std::fmt::Debug for CacheArgs {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheArgs")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "***"))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("cache_ttl_seconds", &self.cache_ttl_seconds)
            .field("cache_timeout_ms", &self.cache_timeout_ms)
            .field("cache_retry_ms", &self.cache_retry_ms)
            .field("cache_pool_size", &self.cache_pool_size)
            .field("cache_key_prefix", &self.cache_key_prefix)
            .finish()
    }
}

impl CacheArgs {
    /// The cache configuration, or `None` when `REDIS_URL` is unset or empty.
    pub fn cache_config(&self) -> Option<CacheConfig> {
        let url = self
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())?;
        Some(CacheConfig {
            url: url.to_owned(),
            ca_file: self.redis_ca_file.clone(),
            ttl: Duration::from_secs(self.cache_ttl_seconds.max(1)),
            op_timeout: Duration::from_millis(self.cache_timeout_ms.max(1)),
            retry_after: Duration::from_millis(self.cache_retry_ms),
            pool_size: self.cache_pool_size.max(1),
            key_prefix: self.cache_key_prefix.clone(),
        })
    }
}

/// How a worker publishes streamed replies, flattened into the worker's
/// arguments (see [`crate::stream`]).
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
    pub fn publisher_config(&self) -> crate::stream::PublisherConfig {
        crate::stream::PublisherConfig {
            flush_interval: Duration::from_millis(self.stream_flush_ms),
            retention: Duration::from_secs(self.stream_retention_seconds),
            ..Default::default()
        }
    }
}
