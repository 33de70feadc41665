#![allow(missing_docs)]
//! `skipjack bench-cancel`: the time from `DELETE /v1/chat/{id}` to the
//! worker dropping the running attempt, on an idle system.
//!
//! Runs in a scratch database of its own (created fresh, dropped
//! afterwards), with the API's router and one worker in this process. Each
//! sample enqueues a job whose handler never returns, waits for the worker
//! to start it, then sends the DELETE through the router (the whole API
//! handler, without the network) and measures until the handler's future
//! is dropped. Also reports how long the DELETE itself took to answer.

use crate::api::{Api, ApiConfig};
use crate::bench::percentile;
use crate::ids::JobId;
use crate::queue::{self, NewJob, Outcome};
use crate::tenants;
use crate::worker::{Handler, JobContext, Worker, WorkerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct CancelBenchArgs {
    /// Jobs cancelled while running, one at a time.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_bench_cancel")]
    pub bench_database: String,
}

/// The numbers `skipjack bench-cancel --json` prints (milliseconds).
#[derive(Clone, Debug, Serialize)]
pub struct CancelBenchReport {
    pub samples: usize,
    pub abort_p50_ms: f64,
    pub abort_p95_ms: f64,
    pub abort_p99_ms: f64,
    pub abort_max_ms: f64,
    pub delete_p50_ms: f64,
    pub delete_p99_ms: f64,
}

impl CancelBenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "skipjack bench-cancel ({} running jobs cancelled one at a time)\n\
             {:<34}{:>10.3} ms\n{:<34}{:>10.3} ms\n{:<34}{:>10.3} ms\n{:<34}{:>10.3} ms\n\
             {:<34}{:>10.3} ms\n{:<34}{:>10.3} ms",
            self.samples,
            "DELETE -> attempt dropped p50",
            self.abort_p50_ms,
            "DELETE -> attempt dropped p95",
            self.abort_p95_ms,
            "DELETE -> attempt dropped p99",
            self.abort_p99_ms,
            "DELETE -> attempt dropped max",
            self.abort_max_ms,
            "DELETE answered p50",
            self.delete_p50_ms,
            "DELETE answered p99",
            self.delete_p99_ms,
        )
    }
}

/// A handler whose jobs never finish; reports each start, and the instant
/// each attempt's future is dropped.
struct Hang {
    started: mpsc::UnboundedSender<JobId>,
    dropped: mpsc::UnboundedSender<(JobId, Instant)>,
}

struct Dropped(JobId, mpsc::UnboundedSender<(JobId, Instant)>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.1.send((self.0, Instant::now()));
    }
}

impl Hang {
    const KIND: &'static str = "bench_hang";
}

impl Handler for Hang {
    fn kind(&self) -> &str {
        Self::KIND
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let _guard = Dropped(ctx.job.id, self.dropped.clone());
        let _ = self.started.send(ctx.job.id);
        std::future::pending().await
    }
}

/// Creates the scratch database, measures, drops the database.
pub async fn run(database_url: &str, args: &CancelBenchArgs) -> anyhow::Result<CancelBenchReport> {
    let scratch = crate::bench::Scratch::create(database_url, &args.bench_database, 16).await?;
    let result = measure(&scratch.pool, args.samples).await;
    scratch.drop().await?;
    result
}

async fn measure(pool: &sqlx::PgPool, samples: usize) -> anyhow::Result<CancelBenchReport> {
    let key = tenants::create_tenant_with_key(pool, "bench", None).await?;
    let tenant = key.tenant;
    let shutdown = CancellationToken::new();
    let api = Api::start(pool.clone(), ApiConfig::default(), shutdown.clone());
    let router = api.router();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let worker = Worker::builder(pool.clone())
        .register(Hang {
            started: started_tx,
            dropped: dropped_tx,
        })
        .config(WorkerConfig {
            concurrency: 4,
            maintenance: None,
            ..WorkerConfig::default()
        })
        .build()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let runtime = tokio::spawn(async move { worker.run(token).await });

    let mut abort = Vec::with_capacity(samples);
    let mut answered = Vec::with_capacity(samples);
    for _ in 0..samples {
        let job = NewJob::new(Hang::KIND, serde_json::json!({})).with_tenant(tenant);
        let id = {
            let mut conn = pool.acquire().await?;
            queue::enqueue(&mut conn, &job).await?.id
        };
        let running = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("worker stopped"))?;
        anyhow::ensure!(running == id, "started {running}, expected {id}");
        let request = Request::builder()
            .method("DELETE")
            .uri(format!("/v1/chat/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", key.secret()))
            .body(Body::empty())?;
        let sent = Instant::now();
        let response = router.clone().oneshot(request).await?;
        let done = Instant::now();
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "DELETE answered {}",
            response.status()
        );
        let (gone, at) = tokio::time::timeout(Duration::from_secs(10), dropped.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("worker stopped"))?;
        anyhow::ensure!(gone == id, "dropped {gone}, expected {id}");
        abort.push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        answered.push(done.saturating_duration_since(sent).as_secs_f64() * 1000.0);
    }
    stop.cancel();
    runtime.await??;
    shutdown.cancel();
    api.stop().await;
    abort.sort_by(f64::total_cmp);
    answered.sort_by(f64::total_cmp);
    Ok(CancelBenchReport {
        samples,
        abort_p50_ms: percentile(&abort, 0.50),
        abort_p95_ms: percentile(&abort, 0.95),
        abort_p99_ms: percentile(&abort, 0.99),
        abort_max_ms: abort.last().copied().unwrap_or(0.0),
        delete_p50_ms: percentile(&answered, 0.50),
        delete_p99_ms: percentile(&answered, 0.99),
    })
}
