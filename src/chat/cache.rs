//! The optional Redis cache-aside for conversation histories.
//!
//! One key per conversation (`{prefix}{conversation id}`), holding the
//! history as JSON together with its [`HistoryVersion`] (seq and created_at
//! of its last message), with a TTL. Postgres stays the source of truth.
//!
//! # Reads are validated, so the cache can never serve a stale history
//! A read first asks Postgres for the history's current version (one step
//! back on the `messages` primary key: no message rows, no content), then
//! takes the cached history only if its version is exactly that one.
//! Otherwise it reads the history from Postgres and writes it back.
//!
//! What is cached is the history window the LLM is sent under the history
//! budget ([`super::history_budget`]), never more; an entry records the budget it
//! was cut for, and a reader with another budget takes it as a miss.
//!
//! Why not trust the cache blindly, as the classic cache-aside does? Jobs of
//! one conversation run one at a time, so the classic race (a reader
//! repopulating the cache with what it read before a writer's update) cannot
//! happen between two jobs of a healthy system: the only reader and the only
//! writer of a conversation's key is its single live job, and the next job
//! is claimable only once the previous one's completion committed. What
//! remains are Redis faults, and those do make a blind cache wrong: an update
//! that times out (Redis stalled, connection killed) leaves the previous
//! history in the key, and the next turn would answer without the last one;
//! a write that was delayed in a stalled Redis can land after a newer one;
//! and an update sent from a completion transaction that then rolled back
//! describes a turn Postgres never stored. With validated reads none of
//! these can be served: a missed update is a miss, a delayed write is a miss,
//! a rolled-back turn carries a timestamp Postgres never reports. The cost
//! is one primary-key probe per read instead of the whole history.
//!
//! Because of that, writes need no ordering and no transaction: the worker
//! writes after the history changed in Postgres, from a background task that
//! never delays or fails a job, and a write that is lost only costs a miss.
//!
//! # Redis down
//! Every operation has a short timeout (`SKIPJACK_CACHE_TIMEOUT_MS`). The
//! first failure logs once and marks Redis down: for `retry_after`, reads and
//! writes skip Redis entirely (counted as errors), so a dead Redis costs no
//! time per job; then one operation probes it again. Recovery logs once.
//!
//! # TLS
//! A `rediss://` URL connects over TLS (rustls), verifying the server's
//! certificate against the built-in Mozilla roots, or against the CA file
//! in [`CacheConfig::ca_file`] (`SKIPJACK_REDIS_CA_FILE`) for a private CA.

use super::store::{self, HistoryMessage, HistoryVersion};
use crate::ids::ConversationId;
use crate::metrics::metrics;
use deadpool_redis::redis::IntoConnectionInfo;
use deadpool_redis::redis::{self, FromRedisValue};
use deadpool_redis::{Connection, Manager, Pool, Runtime};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to reach Redis and how to use it.
#[derive(Clone)]
pub struct CacheConfig {
    /// `redis://…`, or `rediss://…` for TLS; may hold a password: never
    /// logged.
    pub url: String,
    /// PEM file of the CA that signed Redis's certificate, for a `rediss://`
    /// URL; `None`: the built-in public roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Lifetime of a cached history after its last write.
    pub ttl: Duration,
    /// Longest any one Redis operation (including getting a connection) may
    /// take before the worker carries on without it.
    pub op_timeout: Duration,
    /// After a failure, how long to skip Redis before probing it again.
    pub retry_after: Duration,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Prefix of every key.
    pub key_prefix: String,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &"***")
            .field("ca_file", &self.ca_file)
            .field("ttl", &self.ttl)
            .field("op_timeout", &self.op_timeout)
            .field("retry_after", &self.retry_after)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// A cache that cannot be set up (reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL does not parse. The message never repeats the URL.
    #[error("invalid REDIS_URL: {0}")]
    InvalidUrl(String),
    /// The pool could not be built.
    #[error("cannot build the Redis pool: {0}")]
    Pool(String),
    /// The TLS settings of a `rediss://` URL.
    #[error("Redis TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a history came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Redis, validated against Postgres's version.
    Cache,
    /// Postgres (a miss, a stale entry, or Redis unavailable).
    Postgres,
    /// The conversation has no messages: neither was read.
    Empty,
}

/// A history as the handler uses it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The history window.
    pub messages: Arc<Vec<HistoryMessage>>,
    /// The history version it is.
    pub version: HistoryVersion,
    /// Where it came from.
    pub source: Source,
}

/// This cache's own counters (the process-wide metrics count all caches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to Postgres.
    pub misses: u64,
    /// Failed operations and operations skipped while Redis was down.
    pub errors: u64,
    /// Histories written.
    pub writes: u64,
}

/// The Redis history cache. Cheap to clone (shared state).
#[derive(Clone)]
pub struct HistoryCache {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    ttl_ms: u64,
    op_timeout: Duration,
    retry_after: Duration,
    key_prefix: String,
    /// Whether Redis is considered down, and when to probe it again.
    health: Mutex<Health>,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    writes: AtomicU64,
}

#[derive(Debug)]
struct Health {
    down: bool,
    /// While down: no operation before this instant.
    next_probe: Instant,
}

/// What a cache entry holds.
#[derive(Serialize)]
struct EntryRef<'a> {
    v: &'a HistoryVersion,
    /// The budget the window was cut for.
    b: u32,
    m: &'a [HistoryMessage],
}

#[derive(Deserialize)]
struct Entry {
    v: HistoryVersion,
    /// Absent in entries written before histories had a budget: never equal.
    #[serde(default)]
    b: Option<u32>,
    m: Vec<HistoryMessage>,
}

/// One history to write.
#[derive(Clone, Debug)]
pub struct CacheWrite {
    /// The conversation whose history is written.
    pub conversation: ConversationId,
    /// The history version `messages` is.
    pub version: HistoryVersion,
    /// The history window, cut for a budget of `max_tokens`.
    pub messages: Arc<Vec<HistoryMessage>>,
    /// The budget `messages` was cut for.
    pub max_tokens: u32,
}

impl HistoryCache {
    /// A cache over a connection pool; connects lazily, so a Redis that is
    /// down at start-up only means misses until it is up.
    pub fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        // The redis errors for a bad URL do not echo the URL.
        let invalid = |e: redis::RedisError| CacheError::InvalidUrl(e.to_string());
        crate::tls::install_provider();
        let info = match &config.ca_file {
            Some(path) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(crate::tls::redis_root_cert(path)?),
                },
            )
            .map_err(invalid)?
            .get_connection_info()
            .clone(),
            None => config
                .url
                .as_str()
                .into_connection_info()
                .map_err(invalid)?,
        };
        let pool = Pool::builder(Manager::new(info).map_err(invalid)?)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.op_timeout))
            .create_timeout(Some(config.op_timeout))
            // Checking a pooled connection (a PING) may use half the budget.
            .recycle_timeout(Some(config.op_timeout / 2))
            .build()
            .map_err(|e| CacheError::Pool(e.to_string()))?;
        Ok(HistoryCache {
            inner: Arc::new(Inner {
                pool,
                ttl_ms: u64::try_from(config.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                op_timeout: config.op_timeout,
                retry_after: config.retry_after,
                key_prefix: config.key_prefix.clone(),
                health: Mutex::new(Health {
                    down: false,
                    next_probe: Instant::now(),
                }),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            }),
        })
    }

    /// The Redis key of a conversation's history.
    pub fn key(&self, conversation: ConversationId) -> String {
        format!("{}{}", self.inner.key_prefix, conversation)
    }

    /// This cache's counters.
    pub fn stats(&self) -> CacheStats {
        let i = &self.inner;
        CacheStats {
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
            writes: i.writes.load(Ordering::Relaxed),
        }
    }

    /// Whether Redis is considered reachable right now.
    pub fn is_up(&self) -> bool {
        !self.lock_health().down
    }

    /// The conversation's history window under a budget of `max_tokens`:
    /// from the cache when it holds the version Postgres has (cut for the
    /// same budget), else from Postgres (and then written back in the
    /// background). Errors are Postgres's only; Redis failures are misses.
    pub async fn load(
        &self,
        pool: &PgPool,
        conversation: ConversationId,
        max_tokens: u32,
    ) -> sqlx::Result<Loaded> {
        if !self.admit() {
            // Redis is down: one query, as without a cache.
            let (messages, version) =
                store::history_with_version(pool, conversation, max_tokens).await?;
            return Ok(Loaded {
                messages: Arc::new(messages),
                version,
                source: Source::Postgres,
            });
        }
        let version = store::history_version(pool, conversation).await?;
        if version.seq == 0 {
            return Ok(Loaded {
                messages: Arc::default(),
                version,
                source: Source::Empty,
            });
        }
        if let Some(entry) = self.get(conversation).await {
            if entry.v == version && entry.b == Some(max_tokens) {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                metrics().cache_requests.with_label_values(&["hit"]).inc();
                return Ok(Loaded {
                    messages: Arc::new(entry.m),
                    version,
                    source: Source::Cache,
                });
            }
            self.count_miss();
        }
        let (messages, version) =
            store::history_with_version(pool, conversation, max_tokens).await?;
        let messages = Arc::new(messages);
        self.write(vec![CacheWrite {
            conversation,
            version,
            messages: messages.clone(),
            max_tokens,
        }]);
        Ok(Loaded {
            messages,
            version,
            source: Source::Postgres,
        })
    }

    /// Writes `puts` and deletes `deletes` in one pipeline, from a task of
    /// its own: the caller never waits for Redis, and a failure only costs
    /// later misses (reads are validated).
    pub fn write_and_delete(&self, puts: Vec<CacheWrite>, deletes: Vec<ConversationId>) {
        if (puts.is_empty() && deletes.is_empty()) || !self.admit() {
            return;
        }
        let mut pipe = redis::pipe();
        for put in &puts {
            let value = match serde_json::to_string(&EntryRef {
                v: &put.version,
                b: put.max_tokens,
                m: &put.messages,
            }) {
                Ok(value) => value,
                // Serializing strings cannot fail; skip rather than panic.
                Err(_) => continue,
            };
            pipe.cmd("SET")
                .arg(self.key(put.conversation))
                .arg(value)
                .arg("PX")
                .arg(self.inner.ttl_ms)
                .ignore();
        }
        for conversation in &deletes {
            pipe.cmd("DEL").arg(self.key(*conversation)).ignore();
        }
        let cache = self.clone();
        let written = puts.len() as u64;
        tokio::spawn(async move {
            let done = cache.run::<()>(Op::Pipe(pipe)).await;
            if done.is_some() {
                cache.inner.writes.fetch_add(written, Ordering::Relaxed);
            }
        });
    }

    /// Writes histories in the background (see [`Self::write_and_delete`]).
    pub fn write(&self, puts: Vec<CacheWrite>) {
        self.write_and_delete(puts, Vec::new());
    }

    /// The cached entry, if Redis has one that decodes. Counts misses and
    /// errors; the caller counts hits (an entry may still be stale) and has
    /// checked that Redis is not down.
    async fn get(&self, conversation: ConversationId) -> Option<Entry> {
        let key = self.key(conversation);
        let mut get = redis::cmd("GET");
        get.arg(key);
        let raw: Option<Vec<u8>> = self.run(Op::Cmd(get)).await?;
        let Some(raw) = raw else {
            self.count_miss();
            return None;
        };
        match serde_json::from_slice::<Entry>(&raw) {
            Ok(entry) => Some(entry),
            Err(error) => {
                // Written by another version of skipjack, or damaged: it is
                // overwritten by the read-through that follows.
                tracing::debug!(%error, "undecodable history cache entry");
                self.count_miss();
                None
            }
        }
    }

    fn count_miss(&self) {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        metrics().cache_requests.with_label_values(&["miss"]).inc();
    }

    fn count_error(&self) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        metrics().cache_requests.with_label_values(&["error"]).inc();
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        // The guarded state is two plain fields, valid after any panic.
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to try Redis now: always while it is up; while it is down,
    /// once per `retry_after` (a probe). A skipped operation counts as an
    /// error.
    fn admit(&self) -> bool {
        let admitted = {
            let mut health = self.lock_health();
            if !health.down {
                true
            } else {
                let now = Instant::now();
                if now >= health.next_probe {
                    health.next_probe = now + self.inner.retry_after;
                    true
                } else {
                    false
                }
            }
        };
        if !admitted {
            self.count_error();
        }
        admitted
    }

    /// Runs one Redis operation under the timeout and records the outcome.
    async fn run<T: FromRedisValue>(&self, op: Op) -> Option<T> {
        let inner = &self.inner;
        let result = tokio::time::timeout(inner.op_timeout, async {
            let conn = inner.pool.get().await.map_err(|e| e.to_string())?;
            let mut conn = Discard(Some(conn));
            let Some(c) = conn.0.as_mut() else {
                unreachable!("set just above")
            };
            let value = match &op {
                Op::Cmd(cmd) => cmd.query_async::<T>(c).await,
                Op::Pipe(pipe) => pipe.query_async::<T>(c).await,
            }
            .map_err(|e| e.to_string())?;
            conn.keep();
            Ok::<T, String>(value)
        })
        .await;
        match result {
            Ok(Ok(value)) => {
                self.mark_up();
                Some(value)
            }
            Ok(Err(error)) => {
                self.mark_down(&error);
                None
            }
            Err(_) => {
                self.mark_down(&format!(
                    "no answer within {} ms",
                    inner.op_timeout.as_millis()
                ));
                None
            }
        }
    }

    fn mark_up(&self) {
        let was_down = {
            let mut health = self.lock_health();
            std::mem::replace(&mut health.down, false)
        };
        if was_down {
            tracing::info!("Redis history cache reachable again");
        }
    }

    fn mark_down(&self, error: &str) {
        self.count_error();
        let was_up = {
            let mut health = self.lock_health();
            health.next_probe = Instant::now() + self.inner.retry_after;
            !std::mem::replace(&mut health.down, true)
        };
        if was_up {
            tracing::warn!(
                %error,
                retry_ms = self.inner.retry_after.as_millis() as u64,
                "Redis history cache unavailable; reading history from Postgres until it is back"
            );
        }
    }
}

/// One Redis round trip.
enum Op {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
}

/// A pooled connection that goes back to the pool only if its operation
/// succeeded: one that failed or timed out (the future was dropped) may be
/// dead or still waiting for a hung server, and is closed instead, so a
/// recovered Redis gets fresh connections at once.
struct Discard(Option<Connection>);

impl Discard {
    fn keep(&mut self) {
        // Dropping a pooled connection normally returns it to the pool.
        drop(self.0.take());
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Connection::take(conn));
        }
    }
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
