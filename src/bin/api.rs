//! `api`: the REST API server.

use anyhow::Context;
use clap::Parser;
use skipjack::api::{Api, ApiArgs};
use skipjack::db::DatabaseArgs;
use skipjack::{db, signal, telemetry};

#[derive(Parser)]
#[command(name = "api", version, about = "skipjack REST API")]
struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let pool = db::connect(&args.db.db_config("skipjack-api"))
        .await
        .context("connecting to the database")?;
    let schema = db::check_schema(&pool).await?;
    tracing::info!(schema_version = schema.version(), "database schema checked");
    let direct = db::connect_direct(args.db.direct_db_config("skipjack-api").as_ref(), &pool)
        .await
        .context("connecting to the database directly")?;

    let listener = tokio::net::TcpListener::bind(args.api.api_addr)
        .await
        .with_context(|| format!("binding {}", args.api.api_addr))?;
    tracing::info!(addr = %args.api.api_addr, "API listening");
    let mut config = args.api.api_config();
    config.schema = schema;
    let shutdown = signal::shutdown_token();
    // Started first: it creates the metric series a first scrape must see.
    let api = Api::start_with_direct(pool, direct, config, shutdown.clone());
    // /metrics on its own address, away from the public port.
    let metrics = match args.api.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(%addr, "metrics listening");
            Some(tokio::spawn(skipjack::api::serve_metrics(
                listener,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    api.serve(listener).await?;
    if let Some(metrics) = metrics {
        metrics.await??;
    }
    tracing::info!("API stopped");
    Ok(())
}
