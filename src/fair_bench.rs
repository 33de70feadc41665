#![allow(missing_docs)]
//! `skipjack bench-fair`: what one tenant's backlog costs another tenant.
//!
//! In a scratch database (see [`crate::bench::Scratch`]), tenant A enqueues
//! `--jobs` no-op jobs at once; worker runtimes in this process drain them.
//! In the shared rounds tenant B submits one job every `--b-interval-ms`
//! meanwhile, at the same priority, and the bench records how long each of
//! B's jobs waited: from its enqueue returning to its handler starting. The
//! alone rounds drain A's backlog with nobody else, and the two kinds of
//! round alternate, so both see the same machine. The report gives B's wait
//! and A's drain rate in both kinds of round.

use crate::bench::{percentile, spawn_drainers, Scratch};
use crate::ids::{JobId, TenantId};
use crate::queue::{self, NewJob, Outcome};
use crate::tenants;
use crate::worker::{Handler, JobContext};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct FairBenchArgs {
    /// Tenant A's backlog, enqueued at once.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Time between two of tenant B's jobs.
    #[arg(long, default_value_t = 20)]
    pub b_interval_ms: u64,
    /// Rounds of each kind (alone, shared), alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Worker runtimes draining the queue.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Jobs per claim statement.
    #[arg(long, default_value_t = 500)]
    pub max_claim: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_bench_fair")]
    pub bench_database: String,
}

/// The numbers `skipjack bench-fair --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct FairBenchReport {
    pub jobs: usize,
    pub rounds: usize,
    /// A's drain rate with nobody else, median of the rounds.
    pub a_alone_jobs_per_s: f64,
    /// A's drain rate while B submits, median of the rounds.
    pub a_shared_jobs_per_s: f64,
    /// `a_shared / a_alone`.
    pub a_ratio: f64,
    /// B's jobs measured, over all shared rounds.
    pub b_jobs: usize,
    pub b_wait_p50_ms: f64,
    pub b_wait_p99_ms: f64,
    pub b_wait_max_ms: f64,
}

impl FairBenchReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        format!(
            "tenant A backlog        {} jobs, {} rounds of each kind\n\
             A drain, alone          {:.0} jobs/s\n\
             A drain, B submitting   {:.0} jobs/s ({:.0}% of alone)\n\
             B wait ({} jobs)        p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.jobs,
            self.rounds,
            self.a_alone_jobs_per_s,
            self.a_shared_jobs_per_s,
            self.a_ratio * 100.0,
            self.b_jobs,
            self.b_wait_p50_ms,
            self.b_wait_p99_ms,
            self.b_wait_max_ms
        )
    }
}

const KIND: &str = "bench_fair";

/// Records when B's jobs start.
struct StartRecorder {
    b: TenantId,
    started: Arc<Mutex<HashMap<JobId, Instant>>>,
}

impl Handler for StartRecorder {
    fn kind(&self) -> &str {
        KIND
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        if ctx.job.tenant_id == Some(self.b) {
            self.started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ctx.job.id, Instant::now());
        }
        Outcome::Completed {
            result: serde_json::Value::Null,
            usage: None,
        }
    }
}

/// Runs the bench in a scratch database next to `database_url`'s.
pub async fn run(database_url: &str, args: &FairBenchArgs) -> anyhow::Result<FairBenchReport> {
    let pool_size = (2 * args.workers + 6) as u32;
    let scratch = Scratch::create(database_url, &args.bench_database, pool_size).await?;
    let result = rounds(&scratch.pool, args).await;
    scratch.drop().await?;
    result
}

async fn rounds(pool: &PgPool, args: &FairBenchArgs) -> anyhow::Result<FairBenchReport> {
    let a = tenants::create_tenant(pool, "bench-a", None).await?;
    let b = tenants::create_tenant(pool, "bench-b", None).await?;
    let (mut alone, mut shared, mut waits) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let rate = drain_round(pool, args, a, b, None).await?;
        eprintln!("round {round}: A alone {rate:.0} jobs/s");
        alone.push(rate);
        let mut round_waits = Vec::new();
        let rate = drain_round(pool, args, a, b, Some(&mut round_waits)).await?;
        eprintln!(
            "round {round}: A shared {rate:.0} jobs/s, {} B jobs",
            round_waits.len()
        );
        shared.push(rate);
        waits.extend(round_waits);
    }
    alone.sort_by(f64::total_cmp);
    shared.sort_by(f64::total_cmp);
    waits.sort_by(f64::total_cmp);
    let (a_alone, a_shared) = (percentile(&alone, 0.5), percentile(&shared, 0.5));
    Ok(FairBenchReport {
        jobs: args.jobs,
        rounds: args.rounds,
        a_alone_jobs_per_s: a_alone,
        a_shared_jobs_per_s: a_shared,
        a_ratio: a_shared / a_alone,
        b_jobs: waits.len(),
        b_wait_p50_ms: percentile(&waits, 0.5),
        b_wait_p99_ms: percentile(&waits, 0.99),
        b_wait_max_ms: waits.last().copied().unwrap_or(0.0),
    })
}

/// Drains A's backlog once; with `b_waits`, B submits meanwhile and the
/// waits of its jobs are pushed there. Returns A's drain rate.
async fn drain_round(
    pool: &PgPool,
    args: &FairBenchArgs,
    a: TenantId,
    b: TenantId,
    b_waits: Option<&mut Vec<f64>>,
) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let backlog: Vec<NewJob> = (0..args.jobs)
        .map(|_| {
            let mut job = NewJob::new(KIND, serde_json::Value::Null);
            job.tenant_id = Some(a);
            job
        })
        .collect();
    for chunk in backlog.chunks(5_000) {
        queue::enqueue_many(&mut conn, chunk).await?;
    }
    drop(conn);
    sqlx::query("VACUUM ANALYZE jobs").execute(pool).await?;

    let started: Arc<Mutex<HashMap<JobId, Instant>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let begin = Instant::now();
    let runtimes = spawn_drainers(
        pool,
        args.workers,
        (args.concurrency, args.max_claim),
        || StartRecorder {
            b,
            started: started.clone(),
        },
        &shutdown,
    )?;
    let mut submitted: Vec<(JobId, Instant)> = Vec::new();
    let mut conn = pool.acquire().await?;
    let a_queue_empty = |pool: PgPool| async move {
        sqlx::query_scalar::<_, bool>("SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE tenant_id = $1)")
            .bind(a)
            .fetch_one(&pool)
            .await
    };
    let elapsed = loop {
        if b_waits.is_some() {
            let mut job = NewJob::new(KIND, serde_json::Value::Null);
            job.tenant_id = Some(b);
            let id = queue::enqueue(&mut conn, &job).await?.id;
            submitted.push((id, Instant::now()));
        }
        if a_queue_empty(pool.clone()).await? {
            break begin.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(if b_waits.is_some() {
            args.b_interval_ms
        } else {
            20
        }))
        .await;
    };
    drop(conn);
    // B's last jobs finish too.
    while !sqlx::query_scalar::<_, bool>("SELECT NOT EXISTS (SELECT 1 FROM jobs)")
        .fetch_one(pool)
        .await?
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    for runtime in runtimes {
        runtime.await??;
    }
    if let Some(waits) = b_waits {
        let started = started.lock().unwrap_or_else(|e| e.into_inner());
        for (id, at) in submitted {
            let start = started
                .get(&id)
                .ok_or_else(|| anyhow::anyhow!("B's job {id} never started"))?;
            waits.push(start.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    Ok(args.jobs as f64 / elapsed.as_secs_f64())
}
