//! `skipjack`: the admin CLI (migrate, queue statistics, benchmark).

use anyhow::Context;
use clap::{Parser, Subcommand};
use skipjack::{bench, config::DatabaseArgs, db, queue, telemetry};

#[derive(Parser)]
#[command(name = "skipjack", version, about = "skipjack admin CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
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
    /// Measure the queue with no-op jobs in a scratch database.
    Bench {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let applied = db::migrate(&database_url).await?;
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
