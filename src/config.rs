//! Command-line and environment settings shared by the binaries.
//!
//! Every setting is a `--flag` and an environment variable (the interface
//! contract listed in the README's Configuration table); the binaries
//! flatten the groups they need.

use crate::db::DbConfig;
use crate::queue::maintenance::MaintenanceConfig;
use crate::queue::Backoff;
use crate::worker::{default_worker_id, WorkerConfig};
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

/// The database every binary uses when `DATABASE_URL` is not set: the
/// local server and database `scripts/run.sh` sets up (user `postgres`, no
/// password: trust authentication on 127.0.0.1).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/skipjack";

/// Where the database is.
#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://user@localhost/skipjack. TLS comes
    /// from its `sslmode` / `sslrootcert` / `sslcert` / `sslkey` parameters,
    /// as with libpq. May point at PgBouncer in transaction mode.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Postgres URL of a direct (session) connection, for what transaction
    /// pooling breaks: LISTEN and session advisory locks (queue gauges
    /// leader, vacuum), and maintenance. Unset: DATABASE_URL.
    #[arg(long, env = "SKIPJACK_DIRECT_DATABASE_URL", hide_env_values = true)]
    pub direct_database_url: Option<String>,
    /// Connections in this process's pool.
    #[arg(long, env = "SKIPJACK_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Longest wait for a pooled connection before a request fails.
    #[arg(long, env = "SKIPJACK_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,
}

impl std::fmt::Debug for DatabaseArgs {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &"***")
            .field(
                "direct_database_url",
                &self.direct_database_url.as_ref().map(|_| "***"),
            )
            .field("db_pool_size", &self.db_pool_size)
            .finish()
    }
}

/// Connections of the direct pool: the LISTEN connections (one in a
/// worker; two in the API, long-polls and streams), the gauges leader's,
/// and one for maintenance in workers.
pub const DIRECT_POOL_SIZE: u32 = 4;

impl DatabaseArgs {
    /// The direct pool's settings, or `None` when there is no separate
    /// direct URL (then the main pool serves as the direct one).
    pub fn direct_db_config(&self, application_name: &str) -> Option<DbConfig> {
        let url = self
            .direct_database_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())?;
        Some(DbConfig {
            url: url.to_owned(),
            pool_size: DIRECT_POOL_SIZE,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            application_name: format!("{application_name}-direct"),
        })
    }

    /// The database settings, with `application_name` for Postgres.
    pub fn db_config(&self, application_name: &str) -> DbConfig {
        DbConfig {
            url: self.database_url.clone(),
            pool_size: self.db_pool_size,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            application_name: application_name.to_owned(),
        }
    }
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
