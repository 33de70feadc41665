//! The chat worker benchmark behind the `chat-bench` binary: one worker
//! (this process) with the simulated LLM, many chat turns in flight.
//!
//! Runs in a [`Scratch`] database, like `skipjack-bench queue`. Phases:
//! 1. set-up: one tenant, `conversations` conversations, and `jobs` chat
//!    turns enqueued in bulk, turn by turn (turn 1 of every conversation,
//!    then turn 2, ...), so each conversation has `jobs / conversations`
//!    turns queued behind each other before the worker starts;
//! 2. run: a [`Worker`] with the [`ChatHandler`] and `concurrency` slots,
//!    on a pool sized by [`skipjack::worker::pool_size`] as the `worker` binary
//!    does, until the queue is empty.
//!
//! Reported: jobs/s over the run (wall clock from the worker's start to an
//! empty queue); the bound is `min(concurrency, conversations) / latency`;
//! the per-job overhead and per-turn handoff as defined in
//! `tools/sql/bench/chat_report.sql`; this process's peak RSS (`VmHWM`, which
//! includes the set-up phase) and CPU time.

use crate::{sql, Scratch};
use serde::Serialize;
use skipjack::chat::turn::ChatHandler;
use skipjack::chat::{store, ChatPayload, CHAT_KIND};
use skipjack::llm::{self, LlmConfig};
use skipjack::queue::{self, NewJob};
use skipjack::tenants;
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct ChatBenchArgs {
    /// Chat turns in all.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Conversations the turns are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub conversations: usize,
    /// Worker slots (SKIPJACK_CONCURRENCY).
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Simulated LLM latency.
    #[arg(long, default_value_t = 2_000)]
    pub latency_ms: u64,
    /// Simulated latency spread (uniform, mean ± jitter).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Jobs per claim statement.
    #[arg(long, default_value_t = 500)]
    pub max_claim: usize,
    /// Database pool of the worker; default: what the worker binary uses
    /// with SKIPJACK_DB_POOL_SIZE=16.
    #[arg(long)]
    pub db_pool_size: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_chat_bench")]
    pub bench_database: String,
    /// Keep the scratch database afterwards, to query job_history.
    #[arg(long)]
    pub keep_database: bool,
    /// Only set up and enqueue (implies --keep-database), for running the
    /// `worker` binary on the backlog and measuring it from outside.
    #[arg(long)]
    pub enqueue_only: bool,
}

/// The numbers `chat-bench --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct ChatBenchReport {
    pub jobs: usize,
    pub conversations: usize,
    pub concurrency: usize,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub db_pool_size: u32,
    pub completed: i64,
    pub not_completed: i64,
    pub elapsed_s: f64,
    pub jobs_per_s: f64,
    pub bound_jobs_per_s: f64,
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
    pub overhead_max_ms: f64,
    pub handoff_p50_ms: f64,
    pub handoff_p99_ms: f64,
    /// Transactions that completed the jobs (distinct finished_at).
    pub completion_batches: i64,
    /// Mean time of a chat attempt outside the LLM call (history read,
    /// request building): mean attempt run time minus mean LLM call time.
    pub mean_outside_llm_ms: f64,
    /// Mean LLM call time beyond the simulated latency (timer slack,
    /// scheduling on a busy runtime).
    pub mean_llm_slack_ms: f64,
    pub peak_rss_mb: f64,
    pub rss_before_run_mb: f64,
    pub cpu_s: f64,
}

impl ChatBenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "chat-bench ({} turns over {} conversations, {} slots, simulated latency {} ± {} ms, {} DB connections)\n\
             {:<34}{:>12}\n{:<34}{:>12.1} s\n{:<34}{:>12.1} jobs/s (bound {:.1})\n\
             {:<34}{:>12.1} ms\n{:<34}{:>12.1} ms\n{:<34}{:>12.1} ms\n\
             {:<34}{:>12.1} ms\n{:<34}{:>12.1} ms\n{:<34}{:>12}\n\
             {:<34}{:>12.1} ms\n{:<34}{:>12.1} ms\n\
             {:<34}{:>12.1} MB\n{:<34}{:>12.1} MB\n{:<34}{:>12.1} s",
            self.jobs,
            self.conversations,
            self.concurrency,
            self.latency_ms,
            self.jitter_ms,
            self.db_pool_size,
            "completed",
            self.completed,
            "elapsed",
            self.elapsed_s,
            "throughput",
            self.jobs_per_s,
            self.bound_jobs_per_s,
            "overhead p50",
            self.overhead_p50_ms,
            "overhead p99",
            self.overhead_p99_ms,
            "overhead max",
            self.overhead_max_ms,
            "handoff p50",
            self.handoff_p50_ms,
            "handoff p99",
            self.handoff_p99_ms,
            "completion transactions",
            self.completion_batches,
            "mean attempt time outside the LLM",
            self.mean_outside_llm_ms,
            "mean LLM timer slack",
            self.mean_llm_slack_ms,
            "peak RSS (VmHWM)",
            self.peak_rss_mb,
            "RSS before the run",
            self.rss_before_run_mb,
            "CPU time (user+sys)",
            self.cpu_s,
        )
    }
}

/// Creates the scratch database, runs the benchmark, drops the database.
/// With `enqueue_only`, stops after the enqueue and returns `None`.
pub async fn run(
    database_url: &str,
    args: &ChatBenchArgs,
) -> anyhow::Result<Option<ChatBenchReport>> {
    anyhow::ensure!(
        args.conversations > 0 && args.jobs >= args.conversations,
        "need at least one turn per conversation"
    );
    // The set-up pool; the worker gets its own.
    let scratch = Scratch::create(database_url, &args.bench_database, 2).await?;
    if args.enqueue_only {
        enqueue(&scratch.pool, args).await?;
        scratch.vacuum_analyze().await?;
        tracing::info!(database = %scratch.name(), jobs = args.jobs, "enqueued only; the database is kept");
        scratch.keep().await;
        return Ok(None);
    }
    let result = measure(&scratch, args).await;
    if args.keep_database {
        scratch.keep().await;
    } else {
        scratch.drop().await?;
    }
    result.map(Some)
}

async fn measure(scratch: &Scratch, args: &ChatBenchArgs) -> anyhow::Result<ChatBenchReport> {
    let db_pool_size = args
        .db_pool_size
        .unwrap_or_else(|| skipjack::worker::pool_size(16, args.concurrency));
    let setup = &scratch.pool;
    enqueue(setup, args).await?;
    scratch.vacuum_analyze().await?;

    let pool = scratch
        .connect(db_pool_size, "skipjack-chat-bench-worker")
        .await?;
    let provider = llm::build_provider(&LlmConfig {
        simulated_latency_ms: args.latency_ms,
        simulated_jitter_ms: Some(args.jitter_ms),
        ..LlmConfig::default()
    })?;
    let worker = Worker::builder(pool.clone())
        .register(ChatHandler::new(pool.clone(), provider))
        .config(WorkerConfig {
            concurrency: args.concurrency,
            max_claim: args.max_claim,
            maintenance: None,
            ..WorkerConfig::default()
        })
        .build()?;
    let rss_before_run = proc_status_kb("VmRSS").unwrap_or(0) as f64 / 1024.0;
    let cpu_before = cpu_seconds().unwrap_or(0.0);

    let stop = CancellationToken::new();
    let token = stop.clone();
    let started = Instant::now();
    let running = tokio::spawn(async move { worker.run(token).await });
    while queue::read::has_live_jobs(setup, None).await? {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await??;
    let cpu = cpu_seconds().unwrap_or(0.0) - cpu_before;
    let m = skipjack::metrics::metrics();
    let mean = |h: prometheus::Histogram| h.get_sample_sum() / h.get_sample_count().max(1) as f64;
    let run_mean = mean(m.job_run.with_label_values(&[CHAT_KIND]));
    let llm_mean = mean(m.llm_request.with_label_values(&["simulated"]));
    pool.close().await;

    type Row = (i64, i64, f64, f64, f64, f64, f64, i64);
    let (completed, not_completed, o50, o99, omax, h50, h99, batches): Row =
        sqlx::query_as(sql::CHAT_REPORT)
            .bind(args.latency_ms as f64 / 1000.0)
            .fetch_one(setup)
            .await?;
    let lanes = args.concurrency.min(args.conversations) as f64;
    Ok(ChatBenchReport {
        jobs: args.jobs,
        conversations: args.conversations,
        concurrency: args.concurrency,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        db_pool_size,
        completed,
        not_completed,
        elapsed_s: elapsed,
        jobs_per_s: completed as f64 / elapsed,
        bound_jobs_per_s: lanes / (args.latency_ms.max(1) as f64 / 1000.0),
        overhead_p50_ms: o50 * 1000.0,
        overhead_p99_ms: o99 * 1000.0,
        overhead_max_ms: omax * 1000.0,
        handoff_p50_ms: h50 * 1000.0,
        handoff_p99_ms: h99 * 1000.0,
        completion_batches: batches,
        mean_outside_llm_ms: (run_mean - llm_mean) * 1000.0,
        mean_llm_slack_ms: (llm_mean - args.latency_ms as f64 / 1000.0) * 1000.0,
        peak_rss_mb: proc_status_kb("VmHWM").unwrap_or(0) as f64 / 1024.0,
        rss_before_run_mb: rss_before_run,
        cpu_s: cpu,
    })
}

/// One tenant, the conversations, and every turn, turn by turn.
async fn enqueue(pool: &PgPool, args: &ChatBenchArgs) -> anyhow::Result<()> {
    let tenant = tenants::create_tenant(pool, "chat-bench", None).await?;
    let mut conversations = Vec::with_capacity(args.conversations);
    for i in 0..args.conversations {
        let (id, _, _) = store::create_conversation(pool, tenant, &format!("user-{i}")).await?;
        conversations.push(id);
    }
    let turns = args.jobs.div_ceil(args.conversations);
    let mut jobs = Vec::with_capacity(args.jobs);
    'all: for k in 1..=turns {
        for (c, conversation) in conversations.iter().enumerate() {
            if jobs.len() == args.jobs {
                break 'all;
            }
            let payload = ChatPayload {
                user_id: format!("user-{c}"),
                message: format!("conversation {c}, turn {k}: how is the weather today?"),
                metadata: None,
                stream: false,
            };
            jobs.push(
                NewJob::new(CHAT_KIND, serde_json::to_value(payload)?)
                    .with_tenant(tenant)
                    .with_conversation(*conversation),
            );
        }
    }
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    for batch in jobs.chunks(5_000) {
        queue::enqueue_many(&mut conn, batch).await?;
    }
    tracing::info!(
        jobs = jobs.len(),
        ms = started.elapsed().as_millis() as u64,
        "enqueued"
    );
    Ok(())
}

/// A `kB` field of /proc/self/status (Linux only).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time of this process so far (Linux only; assumes the
/// usual 100 clock ticks per second).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
