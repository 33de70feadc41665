//! `chat-bench`: the chat worker benchmark (one worker, simulated LLM) in a
//! scratch database; see `skipjack_tools::chat_bench` and BENCHMARKS.md.

use clap::Parser;
use skipjack::db::DEFAULT_DATABASE_URL;
use skipjack::telemetry;
use skipjack_tools::chat_bench::{self as bench, ChatBenchArgs};

#[derive(Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Benchmark one chat worker with the simulated LLM"
)]
struct Cli {
    /// Postgres to create the scratch database in.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    #[command(flatten)]
    args: ChatBenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let Some(report) = bench::run(&cli.database_url, &cli.args).await? else {
        return Ok(());
    };
    if cli.args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}
