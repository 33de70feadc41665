//! `skipjack`: the admin CLI (migrate, tenants and keys, queue statistics,
//! benchmark).
//!
//! Commands that create a key print it, alone, on stdout, and everything else
//! on stderr, so `KEY=$(skipjack tenants create acme)` works.

use anyhow::Context;
use clap::{Parser, Subcommand};
use skipjack::{bench, config::DatabaseArgs, db, queue, telemetry, tenants};

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
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
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
    /// Measure the queue with no-op jobs in a scratch database.
    Bench {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
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
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    match Cli::parse().command {
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
        Command::Bench { database_url, args } => {
            let report = bench::run(&database_url, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.table());
            }
        }
    }
    Ok(())
}

async fn connect_checked(args: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect(&args.db_config("skipjack-cli"))
        .await
        .context("connecting to the database")?;
    db::check_schema(&pool).await?;
    Ok(pool)
}
