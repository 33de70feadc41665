//! `worker`: claims jobs and runs them (chat turns through the configured
//! LLM, webhook deliveries and no-op jobs), with a health/metrics server.

use anyhow::Context;
use clap::Parser;
use skipjack::chat::setup::chat_handler;
use skipjack::chat::{CacheArgs, HistoryArgs};
use skipjack::db::DatabaseArgs;
use skipjack::llm::LlmConfig;
use skipjack::stream::StreamArgs;
use skipjack::webhooks::{WebhookArgs, WebhookHandler};
use skipjack::worker::WorkerArgs;
use skipjack::worker::{Handler, NoopHandler, Worker};
use skipjack::{db, health, metrics, signal, stream, telemetry};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "worker", version, about = "skipjack worker")]
struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    llm: LlmConfig,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let mut worker_config = args.worker.worker_config();
    let mut db_config = args.db.db_config("skipjack-worker");
    db_config.pool_size =
        skipjack::worker::pool_size(db_config.pool_size, worker_config.concurrency);
    let pool = db::connect(&db_config)
        .await
        .context("connecting to the database")?;
    let schema = db::check_schema(&pool).await?;
    tracing::info!(schema_version = schema.version(), "database schema checked");
    worker_config.schema = schema;
    let direct = db::connect_direct(args.db.direct_db_config("skipjack-worker").as_ref(), &pool)
        .await
        .context("connecting to the database directly")?;

    // Outlives the worker: it writes the last pieces after the last job.
    let publisher_stop = tokio_util::sync::CancellationToken::new();
    let (publisher, publisher_task) = stream::Publisher::spawn(
        pool.clone(),
        args.stream.publisher_config(),
        publisher_stop.clone(),
    );
    let handler = chat_handler(pool.clone(), &args.llm, &args.history, &args.cache, schema)
        .context("setting up the chat handler")?
        .with_stream_publisher(publisher);
    let webhooks = WebhookHandler::new(pool.clone(), args.webhooks.webhook_config())
        .context("setting up webhook deliveries")?;
    tracing::info!(
        timeout_ms = webhooks.config().timeout.as_millis() as u64,
        max_attempts = webhooks.config().max_attempts,
        "webhook deliveries ready"
    );
    metrics::init_worker(&[NoopHandler.kind(), handler.kind(), webhooks.kind()]);
    let shutdown = signal::shutdown_token();
    // Three idle polls without a claim (while slots are free) means the claim
    // loop is stuck.
    let stale_after = (worker_config.poll_interval * 3).max(std::time::Duration::from_secs(5));
    let worker = Arc::new(
        Worker::builder(pool.clone())
            .direct_pool(direct)
            .register(NoopHandler)
            .register(handler)
            .register(webhooks)
            .config(worker_config)
            .build()?,
    );
    let ready = skipjack::worker::claiming_check(worker.clone(), shutdown.clone(), stale_after);

    let listener = tokio::net::TcpListener::bind(args.worker.worker_addr)
        .await
        .with_context(|| format!("binding {}", args.worker.worker_addr))?;
    tracing::info!(addr = %args.worker.worker_addr, "health server listening");
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let health = health::router_for(health::SchemaWatch::new(pool, schema), Some(ready));
        axum::serve(listener, health)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });
    worker.run(shutdown).await?;
    publisher_stop.cancel();
    let _ = publisher_task.await;
    server.await??;
    Ok(())
}
