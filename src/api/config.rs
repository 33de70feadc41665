//! The API's settings: [`ApiArgs`] (flags and environment) and the
//! [`ApiConfig`] the library runs on.

use super::long_poll::LongPollConfig;
use crate::db::Schema;
use crate::queue::gauges::GaugesConfig;
use crate::queue::notify::ListenerConfig;
use crate::queue::NewJob;
use crate::stream::HubConfig;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest long-poll a client may ask for, in seconds (the contract).
pub const MAX_WAIT_SECONDS: f64 = 60.0;

/// How the API runs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest request body; larger ones get 413 before they are read whole.
    pub max_body_bytes: usize,
    /// Longest chat message, in bytes.
    pub max_message_bytes: usize,
    /// Queued jobs (all tenants) above which submissions get 429.
    pub max_queue_depth: i64,
    /// Queued jobs of one tenant above which its submissions get 429, for
    /// tenants without their own `tenants.max_queued`.
    pub max_tenant_queue_depth: i64,
    /// How often the queue depths behind admission control are re-read.
    pub depth_refresh: Duration,
    /// What a 429 tells clients to wait (`Retry-After`, seconds); with
    /// `fair_admission`, the least it tells them.
    pub retry_after_secs: u64,
    /// Serve refused clients in the order they started waiting, with a
    /// `Retry-After` from their place in line (`api::admission`).
    pub fair_admission: bool,
    /// How long the first submission of a batch waits for others to join it.
    pub group_commit_window: Duration,
    /// Most submissions in one INSERT.
    pub group_commit_max_batch: usize,
    /// Batches being written at once; the next batch fills meanwhile.
    pub group_commit_flushes: usize,
    /// How long a successful key lookup is trusted before the database is
    /// asked again: the upper bound on how late a revocation takes effect.
    pub auth_cache_ttl: Duration,
    /// Attempts of each submitted job before it fails for good.
    pub max_attempts: i32,
    /// Time in-flight requests and long-polls get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Long-polls: the re-check interval, the caps per process and per
    /// tenant, and how the LISTEN connection is probed.
    pub long_poll: LongPollConfig,
    /// Take part in refreshing the queue gauges (one process leads, see
    /// [`crate::queue::gauges`]): with the API in the running, the gauges
    /// and autoscaling on them work while no worker runs.
    pub queue_gauges: Option<GaugesConfig>,
    /// The schema the process runs at ([`crate::db::check_schema`] at
    /// start-up): `/ready` checks the database against it, and features of
    /// newer migrations stay off below them. Default: the newest schema
    /// this build knows.
    pub schema: Schema,
    /// How often the snapshot behind `GET /v1/queue` is re-read.
    pub queue_refresh: Duration,
    /// SHA-256 of the admin key (`SKIPJACK_ADMIN_KEY`), whose holder sees
    /// the whole queue on `GET /v1/queue`; `None`: no admin view.
    pub admin_key_hash: Option<[u8; 32]>,
    /// Serve `/metrics` here instead of on the public address.
    pub metrics_addr: Option<SocketAddr>,
    /// Longest an event stream stays open; the client then reconnects with
    /// `Last-Event-ID`.
    pub stream_max: Duration,
    /// Reading streamed pieces: the fallback poll and the LISTEN probe.
    pub stream_hub: HubConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 64 * 1024,
            max_message_bytes: 32 * 1024,
            max_queue_depth: 100_000,
            max_tenant_queue_depth: 50_000,
            depth_refresh: Duration::from_millis(250),
            retry_after_secs: 1,
            fair_admission: true,
            group_commit_window: Duration::from_millis(2),
            group_commit_max_batch: 500,
            group_commit_flushes: 4,
            auth_cache_ttl: Duration::from_secs(5),
            max_attempts: NewJob::DEFAULT_MAX_ATTEMPTS,
            shutdown_grace: Duration::from_secs(25),
            long_poll: LongPollConfig::default(),
            queue_gauges: Some(GaugesConfig::default()),
            schema: Schema::current(),
            queue_refresh: Duration::from_secs(1),
            admin_key_hash: None,
            metrics_addr: None,
            stream_max: Duration::from_secs(600),
            stream_hub: HubConfig::default(),
        }
    }
}

/// Shortest admin key accepted: it guards every tenant's queue counts.
pub const MIN_ADMIN_KEY_LEN: usize = 32;

/// The admin key as given; `Debug` never shows it.
#[derive(Clone)]
pub struct AdminKey(String);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn admin_key(value: &str) -> Result<AdminKey, String> {
    let value = value.trim();
    if value.len() < MIN_ADMIN_KEY_LEN {
        return Err(format!(
            "must be at least {MIN_ADMIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(AdminKey(value.to_owned()))
}

/// The API binary's settings; each is a flag and an environment variable.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address to serve on.
    #[arg(long, env = "SKIPJACK_API_ADDR", default_value = "0.0.0.0:8000")]
    pub api_addr: SocketAddr,
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "SKIPJACK_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Longest chat message in bytes (422 above).
    #[arg(long, env = "SKIPJACK_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024)]
    pub max_message_bytes: usize,
    /// Queued jobs, all tenants, above which POST /v1/chat answers 429.
    /// Priority 5 and above may fill 20% more.
    #[arg(long, env = "SKIPJACK_MAX_QUEUE_DEPTH", default_value_t = 100_000)]
    pub max_queue_depth: i64,
    /// Queued jobs per tenant above which its submissions get 429, unless
    /// the tenant has its own max_queued. Priority 5+ may fill 20% more.
    #[arg(
        long,
        env = "SKIPJACK_MAX_TENANT_QUEUE_DEPTH",
        default_value_t = 50_000
    )]
    pub max_tenant_queue_depth: i64,
    /// How often the queue depth is re-read for admission control.
    #[arg(long, env = "SKIPJACK_DEPTH_REFRESH_MS", default_value_t = 250)]
    pub depth_refresh_ms: u64,
    /// Retry-After of a 429, in seconds (the least a refused submission is
    /// told; its place in the admission line may say more).
    #[arg(long, env = "SKIPJACK_RETRY_AFTER_SECONDS", default_value_t = 1)]
    pub retry_after_seconds: u64,
    /// Share free queue places between refused clients in the order they
    /// started waiting (true), or leave them to whoever retries first
    /// (false).
    #[arg(long, env = "SKIPJACK_FAIR_ADMISSION", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub fair_admission: bool,
    /// Longest wait of a submission for others to share its INSERT.
    #[arg(long, env = "SKIPJACK_GROUP_COMMIT_MS", default_value_t = 2)]
    pub group_commit_ms: u64,
    /// Most submissions in one INSERT.
    #[arg(long, env = "SKIPJACK_GROUP_COMMIT_MAX_BATCH", default_value_t = 500)]
    pub group_commit_max_batch: usize,
    /// INSERT batches in flight at once.
    #[arg(long, env = "SKIPJACK_GROUP_COMMIT_FLUSHES", default_value_t = 4)]
    pub group_commit_flushes: usize,
    /// Seconds a key lookup is cached: revocations take effect within this.
    #[arg(long, env = "SKIPJACK_AUTH_CACHE_SECONDS", default_value_t = 5.0)]
    pub auth_cache_seconds: f64,
    /// Attempts of each submitted job.
    #[arg(long, env = "SKIPJACK_MAX_ATTEMPTS", default_value_t = NewJob::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: i32,
    /// Time in-flight requests and long-polls get after SIGTERM.
    #[arg(long, env = "SKIPJACK_SHUTDOWN_GRACE_SECONDS", default_value_t = 25.0)]
    pub shutdown_grace_seconds: f64,
    /// Long-polls in flight per API process; more get 429 with Retry-After.
    #[arg(long, env = "SKIPJACK_MAX_LONG_POLLS", default_value_t = 10_000)]
    pub max_long_polls: usize,
    /// Long-polls in flight per tenant and API process; more get 429.
    #[arg(long, env = "SKIPJACK_MAX_TENANT_LONG_POLLS", default_value_t = 5_000)]
    pub max_tenant_long_polls: usize,
    /// Seconds between re-checks of the jobs being long-polled (one query
    /// for all): the longest a lost NOTIFY can delay an answer.
    #[arg(
        long,
        env = "SKIPJACK_LONG_POLL_RECHECK_SECONDS",
        default_value_t = 5.0
    )]
    pub long_poll_recheck_seconds: f64,
    /// Seconds between self-probes of the LISTEN connection, and how long a
    /// probe may take before the connection is replaced.
    #[arg(long, env = "SKIPJACK_LISTENER_PROBE_SECONDS", default_value_t = 5.0)]
    pub listener_probe_seconds: f64,
    /// Key whose holder sees the whole queue (every tenant) on GET /v1/queue;
    /// at least 32 characters. Unset: tenants' keys only.
    #[arg(long, env = "SKIPJACK_ADMIN_KEY", hide_env_values = true, value_parser = admin_key)]
    pub admin_key: Option<AdminKey>,
    /// Serve /metrics on this address only (not on SKIPJACK_API_ADDR), so
    /// it need not be public.
    #[arg(long, env = "SKIPJACK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often the snapshot behind GET /v1/queue is re-read.
    #[arg(long, env = "SKIPJACK_QUEUE_REFRESH_MS", default_value_t = 1000)]
    pub queue_refresh_ms: u64,
    /// Longest an event stream (GET /v1/chat/{id}/stream) stays open; the
    /// client then reconnects with Last-Event-ID.
    #[arg(long, env = "SKIPJACK_STREAM_MAX_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stream_max_seconds: u64,
}

impl ApiArgs {
    /// How the API's LISTEN connections (long-polls, streams) probe
    /// themselves.
    fn listener_config(&self) -> ListenerConfig {
        let probe = Duration::from_secs_f64(self.listener_probe_seconds.clamp(0.1, 300.0));
        ListenerConfig {
            probe_interval: probe,
            probe_timeout: probe,
            ..ListenerConfig::default()
        }
    }

    /// The API settings these arguments describe.
    pub fn api_config(&self) -> ApiConfig {
        ApiConfig {
            max_body_bytes: self.max_body_bytes.max(1024),
            max_message_bytes: self.max_message_bytes.max(1),
            max_queue_depth: self.max_queue_depth.max(1),
            max_tenant_queue_depth: self.max_tenant_queue_depth.max(1),
            depth_refresh: Duration::from_millis(self.depth_refresh_ms.max(10)),
            retry_after_secs: self.retry_after_seconds.max(1),
            fair_admission: self.fair_admission,
            group_commit_window: Duration::from_millis(self.group_commit_ms),
            group_commit_max_batch: self.group_commit_max_batch.clamp(1, 10_000),
            group_commit_flushes: self.group_commit_flushes.max(1),
            auth_cache_ttl: Duration::from_secs_f64(self.auth_cache_seconds.clamp(0.0, 300.0)),
            max_attempts: self.max_attempts.clamp(1, 100),
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace_seconds.max(0.0)),
            long_poll: LongPollConfig {
                recheck: Duration::from_secs_f64(self.long_poll_recheck_seconds.clamp(0.1, 60.0)),
                max_waits: self.max_long_polls.max(1),
                max_tenant_waits: self.max_tenant_long_polls.max(1),
                retry_after_secs: self.retry_after_seconds.max(1),
                listener: self.listener_config(),
            },
            queue_gauges: Some(GaugesConfig::default()),
            schema: Schema::current(),
            queue_refresh: Duration::from_millis(self.queue_refresh_ms.clamp(100, 60_000)),
            admin_key_hash: self
                .admin_key
                .as_ref()
                .map(|key| super::queue_status::admin_key_hash(&key.0)),
            metrics_addr: self.metrics_addr,
            stream_max: Duration::from_secs(self.stream_max_seconds),
            stream_hub: HubConfig {
                listener: self.listener_config(),
                ..HubConfig::default()
            },
        }
    }
}
