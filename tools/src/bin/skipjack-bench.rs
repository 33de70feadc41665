//! `skipjack-bench`: the benchmarks of the queue, of fair scheduling, of
//! cancellation and of the console, each in a scratch database next to the
//! one `DATABASE_URL` names (BENCHMARKS.md). Prints a table, or one JSON
//! object with `--json`.

use clap::{Parser, Subcommand};
use serde::Serialize;
use skipjack::db::DEFAULT_DATABASE_URL;
use skipjack::telemetry;
use skipjack_tools::{cancel_bench, console_bench, fair_bench, horizon_bench, queue_bench};

#[derive(Parser)]
#[command(name = "skipjack-bench", version, about = "skipjack benchmarks")]
struct Cli {
    /// Postgres to create the scratch database in.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the queue with no-op jobs: enqueue, drain, pickup latency.
    Queue(queue_bench::QueueBenchArgs),
    /// Measure what one tenant's backlog costs another tenant (fair
    /// scheduling).
    Fair(fair_bench::FairBenchArgs),
    /// Measure DELETE -> worker abort of running jobs.
    Cancel(cancel_bench::CancelBenchArgs),
    /// Measure the console's jobs list and job page over a million
    /// finished jobs.
    Console(console_bench::ConsoleBenchArgs),
    /// Measure pickup and drain while an idle transaction holds the xmin
    /// horizon.
    Horizon(horizon_bench::HorizonBenchArgs),
    /// One worker process of `queue --processes N` (runs no-op jobs until
    /// killed).
    #[command(hide = true)]
    DrainWorker(queue_bench::DrainWorkerArgs),
}

/// Prints `report` as JSON or as its table.
fn print<R: Serialize>(
    report: &R,
    json: bool,
    table: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", table(report));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let url = &cli.database_url;
    match cli.command {
        Command::Queue(args) => {
            let report = queue_bench::run(url, &args).await?;
            print(&report, args.json, |r| r.table())
        }
        Command::Fair(args) => {
            let report = fair_bench::run(url, &args).await?;
            print(&report, args.json, |r| r.table())
        }
        Command::Cancel(args) => {
            let report = cancel_bench::run(url, &args).await?;
            print(&report, args.json, |r| r.table())
        }
        Command::Console(args) => {
            let report = console_bench::run(url, &args).await?;
            print(&report, args.json, |r| r.table())
        }
        Command::Horizon(args) => {
            let report = horizon_bench::run(url, &args).await?;
            print(&report, args.json, |r| r.table())
        }
        Command::DrainWorker(args) => queue_bench::drain_worker(url, &args).await,
    }
}
