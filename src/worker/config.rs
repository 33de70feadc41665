//! The worker's settings: [`WorkerArgs`] (flags and environment) and the
//! [`WorkerConfig`] the library runs on.

use crate::queue::gauges::GaugesConfig;
use crate::queue::maintenance::MaintenanceConfig;
use crate::queue::Backoff;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Lease owner name: unique per process, readable in `job_history.worker`.
    pub id: String,
    /// Jobs in flight at once (slots).
    pub concurrency: usize,
    /// Lease length; heartbeats extend it every third of it.
    pub lease: Duration,
    /// Fallback poll when no NOTIFY arrives (jittered by ±20%).
    pub poll_interval: Duration,
    /// Most jobs one claim statement takes.
    pub max_claim: usize,
    /// After a claim that found a backlog, wait up to this long for more
    /// slots to free up so that claims stay batched.
    pub claim_cooldown: Duration,
    /// Time running jobs get to finish at shutdown before their leases are
    /// released.
    pub shutdown_grace: Duration,
    /// Delay of retries that named none.
    pub backoff: Backoff,
    /// Most outcomes written in one transaction.
    pub completer_batch: usize,
    /// Outcome transactions written at once.
    pub completer_parallelism: usize,
    /// Rescue and housekeeping in this process; `None` leaves them to others.
    pub maintenance: Option<MaintenanceConfig>,
    /// Take part in refreshing the queue gauges (one process leads, see
    /// `queue::gauges`); `None` leaves them to others.
    pub queue_gauges: Option<GaugesConfig>,
    /// The schema the process runs at ([`crate::db::check_schema`] at
    /// start-up): decides the claim, the gauges' statement and aging.
    /// Default: the newest schema this build knows.
    pub schema: crate::db::Schema,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_worker_id(),
            concurrency: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_claim: 500,
            claim_cooldown: Duration::from_millis(2),
            shutdown_grace: Duration::from_secs(25),
            backoff: Backoff::default(),
            completer_batch: 1000,
            completer_parallelism: 2,
            maintenance: Some(MaintenanceConfig::default()),
            queue_gauges: Some(GaugesConfig::default()),
            schema: crate::db::Schema::current(),
        }
    }
}

/// `host-pid-random`: unique per process, and tells an operator where a job
/// ran (Kubernetes sets HOSTNAME to the pod name).
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{:06x}", std::process::id(), suffix & 0xff_ffff)
}

/// How a worker process runs.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Health and metrics server address.
    #[arg(long, env = "SKIPJACK_WORKER_ADDR", default_value = "0.0.0.0:8080")]
    pub worker_addr: SocketAddr,
    /// Jobs in flight at once in this process.
    #[arg(long, env = "SKIPJACK_CONCURRENCY", default_value_t = 100)]
    pub concurrency: usize,
    /// Lease length in seconds; heartbeats renew it every third of it.
    #[arg(long, env = "SKIPJACK_LEASE_SECONDS", default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// Fallback poll interval when no NOTIFY arrives.
    #[arg(long, env = "SKIPJACK_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Time in-flight jobs get to finish after SIGTERM.
    #[arg(long, env = "SKIPJACK_SHUTDOWN_GRACE_SECONDS", default_value_t = 25.0)]
    pub shutdown_grace_seconds: f64,
    /// Delay of the first retry; doubles per attempt.
    #[arg(long, env = "SKIPJACK_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "SKIPJACK_RETRY_MAX_SECONDS", default_value_t = 600)]
    pub retry_max_seconds: u64,
    /// Days finished jobs are kept in job_history.
    #[arg(long, env = "SKIPJACK_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
    /// Longest a partition maintenance step waits for its locks before it
    /// leaves the partition for the next pass (requests on job_history queue
    /// behind it meanwhile, so keep it short).
    #[arg(
        long,
        env = "SKIPJACK_MAINTENANCE_LOCK_TIMEOUT_MS",
        default_value_t = 100
    )]
    pub maintenance_lock_timeout_ms: u64,
    /// Lease owner name; defaults to host-pid-random.
    #[arg(long, env = "SKIPJACK_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl WorkerArgs {
    /// The worker settings these arguments describe.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            concurrency: self.concurrency.max(1),
            lease: Duration::from_secs_f64(self.lease_seconds.max(0.3)),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(10)),
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace_seconds.max(0.0)),
            backoff: Backoff {
                base: Duration::from_millis(self.retry_base_ms),
                max: Duration::from_secs(self.retry_max_seconds),
            },
            maintenance: Some(MaintenanceConfig {
                retention: Duration::from_secs(u64::from(self.retention_days) * 24 * 3600),
                lock_timeout: Duration::from_millis(self.maintenance_lock_timeout_ms.max(1)),
                ..MaintenanceConfig::default()
            }),
            ..WorkerConfig::default()
        }
    }
}

/// Database connections a worker process needs for `concurrency` slots,
/// given the configured pool size (`SKIPJACK_DB_POOL_SIZE`).
///
/// Four long-lived users (the claim loop, the completer, the heartbeat and
/// maintenance) plus the chat handler's history reads. Those are short
/// statements at the start of a job that then waits seconds for the LLM:
/// without a cache the history loader runs at most four at a time whatever
/// the burst; with the Redis cache each job runs one primary-key probe. One
/// connection per 50 slots leaves a wide margin either way: 1,000 slots get
/// 24 connections, not 1,000.
pub fn pool_size(configured: u32, concurrency: usize) -> u32 {
    let needed = 4 + u32::try_from(concurrency.div_ceil(50)).unwrap_or(u32::MAX);
    configured.max(needed.min(64))
}
