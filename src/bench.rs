//! `skipjack bench`: the queue's own throughput and latency, with no-op jobs.
//!
//! Runs in a database of its own (created fresh, dropped afterwards) next to
//! the one `DATABASE_URL` names, so it never touches real jobs. Phases:
//! 1. bulk enqueue: N jobs in batches, one statement per batch;
//! 2. single enqueue: C producers, one job per statement, no worker waiting;
//! 3. drain: W worker runtimes in this process run every queued job;
//! 4. pickup: jobs enqueued one at a time to an idle worker; the time from
//!    the enqueue returning to the handler starting.
//!
//! History is kept (every finished job is written to `job_history`), as in
//! production.

use crate::db::{self, DbConfig};
use crate::ids::JobId;
use crate::queue::{self, NewJob, Outcome};
use crate::worker::{Handler, JobContext, NoopHandler, Worker, WorkerConfig};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Jobs enqueued in bulk (and then drained).
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per bulk enqueue statement.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Jobs enqueued one per statement.
    #[arg(long, default_value_t = 20_000)]
    pub single_jobs: usize,
    /// Concurrent single-row producers.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Worker runtimes draining the queue.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Slots per draining worker.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Jobs per claim statement.
    #[arg(long, default_value_t = 500)]
    pub max_claim: usize,
    /// Jobs in the pickup latency phase.
    #[arg(long, default_value_t = 500)]
    pub pickup_samples: usize,
    /// Pause between pickup jobs.
    #[arg(long, default_value_t = 5)]
    pub pickup_interval_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_bench")]
    pub bench_database: String,
}

/// The numbers `skipjack bench --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub jobs: usize,
    pub single_jobs: usize,
    pub producers: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub enqueue_bulk_jobs_per_s: f64,
    pub enqueue_single_jobs_per_s: f64,
    pub drain_jobs_per_s: f64,
    pub pickup_p50_ms: f64,
    pub pickup_p95_ms: f64,
    pub pickup_p99_ms: f64,
    pub pickup_max_ms: f64,
}

impl BenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "skipjack bench ({} bulk jobs, {} single jobs by {} producers, {} worker(s) x {} slots)\n\
             {:<34}{:>12.0} jobs/s\n{:<34}{:>12.0} jobs/s\n{:<34}{:>12.0} jobs/s\n\
             {:<34}{:>12.3} ms\n{:<34}{:>12.3} ms\n{:<34}{:>12.3} ms\n{:<34}{:>12.3} ms",
            self.jobs,
            self.single_jobs,
            self.producers,
            self.workers,
            self.concurrency,
            "enqueue, bulk",
            self.enqueue_bulk_jobs_per_s,
            "enqueue, single row",
            self.enqueue_single_jobs_per_s,
            "drain",
            self.drain_jobs_per_s,
            "pickup p50",
            self.pickup_p50_ms,
            "pickup p95",
            self.pickup_p95_ms,
            "pickup p99",
            self.pickup_p99_ms,
            "pickup max",
            self.pickup_max_ms,
        )
    }
}

/// Creates the scratch database, runs every phase, drops the database.
pub async fn run(database_url: &str, args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let admin = PgConnectOptions::from_str(database_url)?;
    let name = &args.bench_database;
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "bench database name must be alphanumeric"
    );
    let mut conn = admin.connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let bench_url = db::with_database(database_url, name);
    db::migrate(&bench_url).await?;
    let pool = db::connect(&DbConfig {
        url: bench_url,
        pool_size: (args.producers + 2 * args.workers + 4) as u32,
        acquire_timeout: Duration::from_secs(30),
        application_name: "skipjack-bench".into(),
    })
    .await?;

    let result = phases(&pool, args).await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    result
}

async fn phases(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let bulk = enqueue_bulk(pool, args.jobs, args.batch).await?;
    eprintln!("bulk enqueue: {bulk:.0} jobs/s");
    let single = enqueue_single(pool, args.single_jobs, args.producers).await?;
    eprintln!("single-row enqueue: {single:.0} jobs/s");
    sqlx::query("VACUUM ANALYZE jobs").execute(pool).await?;
    let drain = drain(pool, args.jobs + args.single_jobs, args).await?;
    eprintln!("drain: {drain:.0} jobs/s");
    // The drain leaves the claim index full of dead entries that each claim
    // would walk past until autovacuum (a minute at most with the table's
    // settings) removes them. Pickup is measured on an idle queue, as an
    // idle queue is once autovacuum has run.
    sqlx::query("VACUUM ANALYZE jobs").execute(pool).await?;
    let mut pickup = pickup(pool, args.pickup_samples, args.pickup_interval_ms).await?;
    pickup.sort_by(f64::total_cmp);
    Ok(BenchReport {
        jobs: args.jobs,
        single_jobs: args.single_jobs,
        producers: args.producers,
        workers: args.workers,
        concurrency: args.concurrency,
        enqueue_bulk_jobs_per_s: bulk,
        enqueue_single_jobs_per_s: single,
        drain_jobs_per_s: drain,
        pickup_p50_ms: percentile(&pickup, 0.50),
        pickup_p95_ms: percentile(&pickup, 0.95),
        pickup_p99_ms: percentile(&pickup, 0.99),
        pickup_max_ms: pickup.last().copied().unwrap_or(0.0),
    })
}

/// The value at quantile `q` of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn noop_job(i: usize) -> NewJob {
    NewJob::new(NoopHandler::KIND, serde_json::json!({ "n": i }))
}

async fn enqueue_bulk(pool: &PgPool, jobs: usize, batch: usize) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let mut done = 0;
    while done < jobs {
        let n = batch.min(jobs - done);
        let batch: Vec<NewJob> = (done..done + n).map(noop_job).collect();
        queue::enqueue_many(&mut conn, &batch).await?;
        done += n;
    }
    Ok(jobs as f64 / start.elapsed().as_secs_f64())
}

async fn enqueue_single(pool: &PgPool, jobs: usize, producers: usize) -> anyhow::Result<f64> {
    let per_producer = jobs / producers.max(1);
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers.max(1))
        .map(|p| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                for i in 0..per_producer {
                    queue::enqueue(&mut conn, &noop_job(p * per_producer + i)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((per_producer * producers.max(1)) as f64 / start.elapsed().as_secs_f64())
}

async fn drain(pool: &PgPool, expected: usize, args: &BenchArgs) -> anyhow::Result<f64> {
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let mut runtimes = Vec::new();
    for _ in 0..args.workers.max(1) {
        let worker = Worker::builder(pool.clone())
            .register(NoopHandler)
            .config(WorkerConfig {
                concurrency: args.concurrency,
                max_claim: args.max_claim,
                maintenance: None,
                ..WorkerConfig::default()
            })
            .build()?;
        let token = shutdown.clone();
        runtimes.push(tokio::spawn(async move { worker.run(token).await }));
    }
    loop {
        let live: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs)")
            .fetch_one(pool)
            .await?;
        if !live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    for runtime in runtimes {
        runtime.await??;
    }
    let finished: i64 = sqlx::query_scalar("SELECT count(*) FROM job_history")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        finished as usize == expected,
        "drained {finished} jobs, expected {expected}"
    );
    Ok(expected as f64 / elapsed.as_secs_f64())
}

/// Reports when each job's handler started.
struct PickupHandler {
    started: Arc<Mutex<HashMap<JobId, oneshot::Sender<Instant>>>>,
}

impl PickupHandler {
    const KIND: &'static str = "bench_pickup";
}

impl Handler for PickupHandler {
    fn kind(&self) -> &str {
        Self::KIND
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let now = Instant::now();
        tracing::trace!(job_id = %ctx.job.id, "pickup handler started");
        let waiter = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ctx.job.id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(now);
        }
        Outcome::Completed {
            result: serde_json::Value::Null,
            usage: None,
        }
    }
}

async fn pickup(pool: &PgPool, samples: usize, interval_ms: u64) -> anyhow::Result<Vec<f64>> {
    let started: Arc<Mutex<HashMap<JobId, oneshot::Sender<Instant>>>> = Arc::default();
    let worker = Worker::builder(pool.clone())
        .register(PickupHandler {
            started: started.clone(),
        })
        .config(WorkerConfig {
            concurrency: 10,
            // Long enough that only NOTIFY explains a fast pickup.
            poll_interval: Duration::from_secs(5),
            maintenance: None,
            ..WorkerConfig::default()
        })
        .build()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let runtime = tokio::spawn(async move { worker.run(token).await });
    // Let the worker find the queue empty and register as a waiter.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut conn = pool.acquire().await?;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        // Enqueue inside a transaction so the handler can be told about the
        // id before the job becomes visible.
        let mut tx = conn.begin().await?;
        let job = NewJob::new(PickupHandler::KIND, serde_json::json!({ "n": i }));
        let id = queue::enqueue(&mut tx, &job).await?.id;
        let (send, receive) = oneshot::channel();
        started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, send);
        tx.commit().await?;
        let returned = Instant::now();
        tracing::trace!(job_id = %id, "enqueued");
        let began = tokio::time::timeout(Duration::from_secs(10), receive).await??;
        latencies.push(began.saturating_duration_since(returned).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    shutdown.cancel();
    runtime.await??;
    Ok(latencies)
}
