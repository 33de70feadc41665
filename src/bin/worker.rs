//! `worker`: claims jobs and runs them, with a health/metrics server.

use anyhow::Context;
use clap::Parser;
use skipjack::config::{DatabaseArgs, WorkerArgs};
use skipjack::worker::{NoopHandler, Worker};
use skipjack::{db, health, signal, telemetry};

#[derive(Parser)]
#[command(name = "worker", version, about = "skipjack worker")]
struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let mut db_config = args.db.db_config("skipjack-worker");
    // The claim loop, the completer, heartbeats and maintenance each need one.
    db_config.pool_size = db_config.pool_size.max(4);
    let pool = db::connect(&db_config)
        .await
        .context("connecting to the database")?;
    db::check_schema(&pool).await?;

    let shutdown = signal::shutdown_token();
    let worker = Worker::builder(pool.clone())
        .register(NoopHandler)
        .config(args.worker.worker_config())
        .build()?;

    let listener = tokio::net::TcpListener::bind(args.worker.worker_addr)
        .await
        .with_context(|| format!("binding {}", args.worker.worker_addr))?;
    tracing::info!(addr = %args.worker.worker_addr, "health server listening");
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, health::router(pool))
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });
    worker.run(shutdown).await?;
    server.await??;
    Ok(())
}
