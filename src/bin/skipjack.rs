//! `skipjack`: the admin CLI (migrate, tenants and keys, queue statistics,
//! jobs: show, list, retry, cancel; and the container health check).
//!
//! Commands that create a key print it, alone, on stdout, and everything else
//! on stderr, so `KEY=$(skipjack tenants create acme)` works.

use anyhow::Context;
use clap::{Parser, Subcommand};
use skipjack::db::{DatabaseArgs, DEFAULT_DATABASE_URL};
use skipjack::ids::JobId;
use skipjack::operator::{self, ListArgs};
use skipjack::queue::JobState;
use skipjack::{db, queue, telemetry, tenants};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "skipjack", version, about = "skipjack admin CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations (through the direct URL when one
    /// is set: DDL and its locks do not belong behind a transaction pooler).
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
        #[arg(long, env = "SKIPJACK_DIRECT_DATABASE_URL", hide_env_values = true)]
        direct_database_url: Option<String>,
    },
    /// Queue depth by priority, jobs processing, oldest ready job (JSON).
    Stats {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Run the housekeeping pass now (partitions, retention, pruning).
    Prune {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Days of history to keep.
        #[arg(long, env = "SKIPJACK_RETENTION_DAYS", default_value_t = 30)]
        retention_days: u32,
    },
    /// Jobs: show one, list by state, retry failed or cancelled ones,
    /// cancel live ones.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Tenants: `tenants create NAME` prints the new tenant's first API key.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// API keys: create (printed once) and revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// GET a health URL: exit 0 on a 2xx answer, 1 otherwise (for container
    /// health checks: the image has no curl).
    Health {
        /// URL to GET. Default: /health on the port of SKIPJACK_API_ADDR
        /// (8000) or of SKIPJACK_WORKER_ADDR (8080), whichever answers, so
        /// one check fits the API and the worker container.
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout_seconds: f64,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// A job's state, attempts, errors, events and timings.
    Show {
        #[command(flatten)]
        db: DatabaseArgs,
        id: JobId,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Jobs newest first (by finish time, or creation time while live).
    List {
        #[command(flatten)]
        db: DatabaseArgs,
        /// queued, processing, completed, failed or cancelled (default: any).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Tenant name or id.
        #[arg(long)]
        tenant: Option<String>,
        /// Only jobs finished (or created, while live) this recently: 90s,
        /// 30m, 1h, 2d.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put failed or cancelled jobs back in the queue (same id, a new
    /// attempt, a fresh budget of attempts). By id, or every job failed
    /// since a time (--failed-since). Prints what was retried and what was
    /// refused and why; exits 1 when anything was refused.
    Retry {
        #[command(flatten)]
        db: DatabaseArgs,
        #[arg(
            required_unless_present = "failed_since",
            conflicts_with = "failed_since"
        )]
        ids: Vec<JobId>,
        /// Retry every job that failed this recently: 30m, 1h, 2d.
        #[arg(long, value_parser = parse_duration)]
        failed_since: Option<Duration>,
        /// With --failed-since: only this tenant's jobs (name or id).
        #[arg(long, requires = "failed_since")]
        tenant: Option<String>,
        /// With --failed-since: at most this many jobs.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Cancel queued or running jobs (a running job's worker stops it at
    /// once). Exits 1 when anything was refused.
    Cancel {
        #[command(flatten)]
        db: DatabaseArgs,
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
}

fn parse_state(text: &str) -> Result<JobState, String> {
    serde_json::from_value(serde_json::Value::String(text.to_lowercase()))
        .map_err(|_| "expected queued, processing, completed, failed or cancelled".to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    operator::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Create a tenant and its first API key; prints only the key on stdout.
    Create {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The tenant's unique name.
        name: String,
        /// Cap on the tenant's queued jobs (default: the API's
        /// SKIPJACK_MAX_TENANT_QUEUE_DEPTH).
        #[arg(long)]
        max_queued: Option<i32>,
    },
    /// Set a tenant's scheduling (by name or id): its weight against other
    /// tenants and its cap on jobs processing at once (docs/scheduling.md).
    /// Prints the tenant's settings as JSON.
    Set {
        #[command(flatten)]
        db: DatabaseArgs,
        tenant: String,
        /// Share of the workers against other tenants with work at the same
        /// priority, 1 to 100 (default for new tenants: 1).
        #[arg(long)]
        weight: Option<i16>,
        /// Cap on the tenant's jobs processing at once.
        #[arg(long, conflicts_with = "default_max_running")]
        max_running: Option<i32>,
        /// Drop the tenant's own cap: the shared default applies.
        #[arg(long)]
        default_max_running: bool,
    },
    /// Set the scheduler's settings shared by every worker: the aging rate
    /// and the default cap on a tenant's running jobs. Prints them as JSON.
    Defaults {
        #[command(flatten)]
        db: DatabaseArgs,
        /// A waiting queue's priority rises one level per this many seconds
        /// (default 10).
        #[arg(long)]
        aging_seconds: Option<f64>,
        /// Cap on running jobs for tenants without their own.
        #[arg(long, conflicts_with = "no_max_running")]
        max_running: Option<i32>,
        /// No default cap on running jobs.
        #[arg(long)]
        no_max_running: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create another API key for a tenant (by name or id); prints only the
    /// key on stdout.
    Create {
        #[command(flatten)]
        db: DatabaseArgs,
        tenant: String,
    },
    /// Revoke a key by its id or its prefix (the `sk_…` characters shown at
    /// creation); API processes stop accepting it within seconds.
    Revoke {
        #[command(flatten)]
        db: DatabaseArgs,
        key: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    telemetry::init();
    match Cli::parse().command {
        Command::Health {
            url,
            timeout_seconds,
        } => {
            let timeout = Duration::try_from_secs_f64(timeout_seconds)
                .context("--timeout-seconds must be a non-negative number")?;
            let urls = match url {
                Some(url) => vec![url],
                None => local_health_urls(),
            };
            return Ok(health(&urls, timeout).await);
        }
        Command::Migrate {
            database_url,
            direct_database_url,
        } => {
            let url = direct_database_url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or(database_url);
            let applied = db::migrate(&url).await?;
            if applied.is_empty() {
                eprintln!(
                    "database is up to date (version {})",
                    db::expected_version()
                );
            }
            for name in applied {
                eprintln!("applied {name}");
            }
        }
        Command::Stats { db: args } => {
            let pool = connect_checked(&args).await?;
            let stats = queue::stats(&pool).await?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        Command::Prune {
            db: args,
            retention_days,
        } => {
            let pool = connect_checked(&args).await?;
            let config = queue::maintenance::MaintenanceConfig {
                retention: std::time::Duration::from_secs(u64::from(retention_days) * 86_400),
                ..Default::default()
            };
            let report =
                queue::maintenance::housekeeping(&pool, &config, chrono::Utc::now()).await?;
            eprintln!("{report:?}");
        }
        Command::Jobs { command } => return jobs(command).await,
        Command::Tenants {
            command:
                TenantsCommand::Create {
                    db: args,
                    name,
                    max_queued,
                },
        } => {
            let pool = connect_checked(&args).await?;
            let key = tenants::create_tenant_with_key(&pool, &name, max_queued).await?;
            eprintln!(
                "created tenant {name} ({}) with key {} (prefix {})",
                key.tenant, key.id, key.prefix
            );
            println!("{}", key.secret());
        }
        Command::Tenants {
            command:
                TenantsCommand::Set {
                    db: args,
                    tenant,
                    weight,
                    max_running,
                    default_max_running,
                },
        } => {
            let pool = connect_checked(&args).await?;
            let found = tenants::find_tenant(&pool, &tenant).await?;
            let change = tenants::SchedulingChange {
                weight,
                max_running,
                default_max_running,
            };
            let settings = tenants::set_scheduling(&pool, found.id, change).await?;
            println!("{}", serde_json::to_string(&settings)?);
        }
        Command::Tenants {
            command:
                TenantsCommand::Defaults {
                    db: args,
                    aging_seconds,
                    max_running,
                    no_max_running,
                },
        } => {
            let pool = connect_checked(&args).await?;
            let settings =
                tenants::set_scheduling_defaults(&pool, aging_seconds, max_running, no_max_running)
                    .await?;
            println!("{}", serde_json::to_string(&settings)?);
        }
        Command::Keys {
            command: KeysCommand::Create { db: args, tenant },
        } => {
            let pool = connect_checked(&args).await?;
            let tenant = tenants::find_tenant(&pool, &tenant).await?;
            let key = tenants::create_key(&pool, tenant.id).await?;
            eprintln!(
                "created key {} (prefix {}) for tenant {} ({})",
                key.id, key.prefix, tenant.name, tenant.id
            );
            println!("{}", key.secret());
        }
        Command::Keys {
            command: KeysCommand::Revoke { db: args, key },
        } => {
            let pool = connect_checked(&args).await?;
            let revoked = tenants::revoke_key(&pool, &key).await?;
            eprintln!(
                "revoked key {} (prefix {}) of tenant {}",
                revoked.id, revoked.key_prefix, revoked.tenant_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `skipjack jobs ...`.
async fn jobs(command: JobsCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::Show { db: args, id, json } => {
            let pool = connect_checked(&args).await?;
            let Some(detail) = operator::show(&pool, id).await? else {
                eprintln!("no job {id}");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", detail.text());
            }
        }
        JobsCommand::List {
            db: args,
            state,
            tenant,
            since,
            limit,
            json,
        } => {
            let pool = connect_checked(&args).await?;
            let listed = operator::list(
                &pool,
                &ListArgs {
                    state,
                    tenant,
                    since,
                    limit,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", operator::list_text(&listed));
            }
        }
        JobsCommand::Retry {
            db: args,
            ids,
            failed_since,
            tenant,
            limit,
        } => {
            let pool = connect_checked(&args).await?;
            let report = match failed_since {
                Some(ago) => {
                    operator::retry_failed_since(&pool, ago, tenant.as_deref(), limit).await?
                }
                None => operator::retry(&pool, &ids).await?,
            };
            print!("{}", report.text("retried"));
            if !report.refused.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        JobsCommand::Cancel { db: args, ids } => {
            let pool = connect_checked(&args).await?;
            let report = operator::cancel(&pool, &ids, "cancelled by an operator").await?;
            print!("{}", report.text("cancelled"));
            if !report.refused.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `/health` of the API and of the worker on this host, from the addresses
/// they are configured to listen on.
fn local_health_urls() -> Vec<String> {
    [
        ("SKIPJACK_API_ADDR", "0.0.0.0:8000"),
        ("SKIPJACK_WORKER_ADDR", "0.0.0.0:8080"),
    ]
    .iter()
    .filter_map(|(var, default)| {
        let addr: SocketAddr = std::env::var(var)
            .unwrap_or_else(|_| (*default).to_owned())
            .parse()
            .ok()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        Some(format!("http://{host}:{}/health", addr.port()))
    })
    .collect()
}

/// Success when any of `urls` answers 2xx within `timeout`; says on stderr
/// what each answered otherwise.
async fn health(urls: &[String], timeout: Duration) -> ExitCode {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("health: {e}");
            return ExitCode::FAILURE;
        }
    };
    for url in urls {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => return ExitCode::SUCCESS,
            Ok(response) => eprintln!("health: {url} answered {}", response.status()),
            Err(e) => eprintln!("health: {url}: {e}"),
        }
    }
    ExitCode::FAILURE
}

async fn connect_checked(args: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(&args.db_config("skipjack-cli"))
        .await
        .context("connecting to the database")?;
    db::check_schema(&pool).await?;
    Ok(pool)
}
