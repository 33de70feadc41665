//! `skipjack-bench queue`: the queue's own throughput and latency, with
//! no-op jobs.
//!
//! Runs in a [`Scratch`] database, so it never touches real jobs. Phases:
//! 1. bulk enqueue: N jobs in batches, one statement per batch;
//! 2. single enqueue: C producers, one job per statement, no worker waiting;
//! 3. drain: W worker runtimes in this process run every queued job;
//! 4. pickup: jobs enqueued one at a time to an idle worker; the time from
//!    the enqueue returning to the handler starting.
//!
//! History is kept (every finished job is written to `job_history`), as in
//! production.
//!
//! Wall-clock rates swing with a noisy machine, so the drain also reports
//! the work it cost per job, which noise does not move: the Postgres
//! server's CPU (its processes' utime + stime from /proc, when the server
//! runs on this machine; backends that exit during the drain are not
//! counted, so the counters are read when the queue is empty, before the
//! workers stop), this process's CPU (the workers run in it), the WAL
//! written (`pg_current_wal_lsn()` before and after), and the heap rows
//! inserted, updated (HOT or not) and deleted in the bench database with
//! the index entries they wrote (`pg_stat_*`, read after waiting for every
//! backend to report: the drain phase takes about 20 s longer for it).

use crate::loadgen::stats::{cpu_time_of_stat, process_cpu_time};
use crate::{percentile, sql, Scratch};
use serde::Serialize;
use skipjack::ids::JobId;
use skipjack::queue::{self, NewJob, Outcome};
use skipjack::worker::{Handler, JobContext, NoopHandler, Worker, WorkerConfig};
use sqlx::{Connection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct QueueBenchArgs {
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
    /// Drain with this many separate worker processes (each
    /// `skipjack-bench drain-worker` with one runtime of `--concurrency`
    /// slots) instead of `--workers` runtimes in this process; 0: in this
    /// process.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// After the benchmark, run `bench/raw_drain.sh` (pgbench, the least SQL
    /// a queue with history can run) on as many jobs as were drained, with
    /// one client per worker process, and report skipjack's drain as a share
    /// of that ceiling.
    #[arg(long)]
    pub raw_ceiling: bool,
    /// SQL run in the scratch database after it is migrated: to measure a
    /// change of the tables (an index dropped, a trigger replaced) before
    /// writing its migration.
    #[arg(long)]
    pub after_migrate: Option<std::path::PathBuf>,
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

/// Who drains the queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drainers {
    /// Worker runtimes in this process (when `processes` is 0).
    pub workers: usize,
    /// Separate worker processes; 0: runtimes in this process.
    pub processes: usize,
    /// Slots per worker.
    pub concurrency: usize,
    /// Jobs per claim statement.
    pub max_claim: usize,
}

impl QueueBenchArgs {
    fn drainers(&self) -> Drainers {
        Drainers {
            workers: self.workers,
            processes: self.processes,
            concurrency: self.concurrency,
            max_claim: self.max_claim,
        }
    }
}

/// The numbers `skipjack-bench queue --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct QueueBenchReport {
    pub jobs: usize,
    pub single_jobs: usize,
    /// Jobs the drain ran: the bulk ones and the single ones enqueued
    /// (rounded down to a multiple of the producers).
    pub drained_jobs: usize,
    pub producers: usize,
    pub workers: usize,
    pub processes: usize,
    pub concurrency: usize,
    pub enqueue_bulk_jobs_per_s: f64,
    pub enqueue_single_jobs_per_s: f64,
    pub drain_jobs_per_s: f64,
    pub pickup_p50_ms: f64,
    pub pickup_p95_ms: f64,
    pub pickup_p99_ms: f64,
    pub pickup_max_ms: f64,
    /// What the drain cost per job.
    pub drain_work: DrainWork,
    /// The raw ceiling measured right after (`--raw-ceiling`).
    pub raw: Option<RawCeiling>,
}

/// What `bench/raw_drain.sh` printed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RawCeiling {
    pub jobs_per_s: f64,
    pub postgres_cpu_us: f64,
    pub wal_bytes: f64,
}

/// Runs `bench/raw_drain.sh` with `jobs` jobs and `clients` clients.
fn raw_ceiling(database_url: &str, jobs: usize, clients: usize) -> anyhow::Result<RawCeiling> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/raw_drain.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .env("JOBS", jobs.to_string())
        .env("CLIENTS", clients.to_string())
        .env("SKIPJACK_BENCH_ADMIN_URL", database_url)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "bench/raw_drain.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    // "raw drain (N jobs, C client(s)): X jobs/s", "  Postgres CPU per job
    // X µs", "  WAL per job X bytes".
    let number = |line: &str, before: &str| -> Option<f64> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words.iter().position(|w| *w == before)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let mut raw = RawCeiling::default();
    for line in text.lines() {
        if line.starts_with("raw drain") {
            raw.jobs_per_s = number(line, "jobs/s").unwrap_or_default();
        } else if line.contains("Postgres CPU per job") {
            raw.postgres_cpu_us = number(line, "µs").unwrap_or_default();
        } else if line.contains("WAL per job") {
            raw.wal_bytes = number(line, "bytes").unwrap_or_default();
        }
    }
    anyhow::ensure!(
        raw.jobs_per_s > 0.0,
        "unexpected output of bench/raw_drain.sh: {text}"
    );
    Ok(raw)
}

/// The work of the drain, per drained job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrainWork {
    /// CPU of every process named `postgres` on this machine, in µs;
    /// `None` when the server is not local (no such process in /proc).
    pub postgres_cpu_us: Option<f64>,
    /// CPU of the workers (this process, and the worker processes of
    /// `--processes`), in µs.
    pub worker_cpu_us: Option<f64>,
    /// WAL written, in bytes.
    pub wal_bytes: f64,
    /// Heap rows inserted (jobs into job_history, events).
    pub heap_inserted: f64,
    /// Heap rows updated, HOT or not (the claims).
    pub heap_updated: f64,
    /// Of those, HOT updates (no new index entries).
    pub heap_hot_updated: f64,
    /// Heap rows deleted (jobs leaving the live table).
    pub heap_deleted: f64,
    /// Index entries written: every insert and every non-HOT update adds
    /// one to each index of its table.
    pub index_entries: f64,
    /// Transactions (a statement outside a transaction block is one),
    /// of the workers and of this process's polling.
    pub transactions: f64,
}

impl QueueBenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "skipjack-bench queue ({} bulk jobs, {} single jobs by {} producers, {} x {} slots)\n\
             {:<34}{:>12.0} jobs/s\n{:<34}{:>12.0} jobs/s\n{:<34}{:>12.0} jobs/s\n\
             {:<34}{:>12.3} ms\n{:<34}{:>12.3} ms\n{:<34}{:>12.3} ms\n{:<34}{:>12.3} ms",
            self.jobs,
            self.single_jobs,
            self.producers,
            if self.processes > 0 {
                format!("{} worker process(es)", self.processes)
            } else {
                format!("{} worker runtime(s)", self.workers)
            },
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
        ) + &self.drain_work.table()
            + &self.raw.as_ref().map_or(String::new(), |raw| {
                format!(
                    "\nraw ceiling (bench/raw_drain.sh, same jobs):\n{:<34}{:>12.0} jobs/s ({:.0} % of it drained by skipjack)\n\
                     {:<34}{:>12.1} µs\n{:<34}{:>12.0} bytes",
                    "  raw drain",
                    raw.jobs_per_s,
                    100.0 * self.drain_jobs_per_s / raw.jobs_per_s,
                    "  raw Postgres CPU per job",
                    raw.postgres_cpu_us,
                    "  raw WAL per job",
                    raw.wal_bytes,
                )
            })
    }
}

impl DrainWork {
    fn table(&self) -> String {
        let us = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        format!(
            "\ndrain, per job:\n{:<34}{:>12} µs\n{:<34}{:>12} µs\n{:<34}{:>12.0} bytes\n\
             {:<34}{:>12.2}\n{:<34}{:>12.2}\n{:<34}{:>12.2}\n{:<34}{:>12.2}\n{:<34}{:>12.2}\n{:<34}{:>12.4}",
            "  Postgres CPU",
            us(self.postgres_cpu_us),
            "  worker process CPU",
            us(self.worker_cpu_us),
            "  WAL",
            self.wal_bytes,
            "  heap rows inserted",
            self.heap_inserted,
            "  heap rows updated",
            self.heap_updated,
            "    of which HOT",
            self.heap_hot_updated,
            "  heap rows deleted",
            self.heap_deleted,
            "  index entries written",
            self.index_entries,
            "  transactions",
            self.transactions,
        )
    }
}

/// The CPU and WAL counters behind [`DrainWork`], read at once.
pub(crate) struct Counters {
    postgres_cpu: Option<Duration>,
    /// This process's CPU and that of the worker processes.
    worker_cpu: Option<Duration>,
    wal_lsn: String,
}

/// The database's statistics counters.
struct TableStats {
    /// Per table: inserted, updated, HOT-updated, deleted, and its indexes.
    tables: HashMap<String, [i64; 5]>,
    /// Transactions ended in the database.
    transactions: i64,
}

/// How long an idle backend may keep its statistics before it reports
/// them (Postgres's PGSTAT_IDLE_INTERVAL, 10 s), plus a margin.
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// CPU of every process named `postgres` on this machine, if any.
fn postgres_cpu() -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_postgres =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "postgres");
        if !is_postgres {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| cpu_time_of_stat(&stat))
        {
            total += cpu;
            found = true;
        }
    }
    found.then_some(total)
}

/// The counters now; `children` are the worker processes.
async fn counters(pool: &PgPool, children: &[u32]) -> anyhow::Result<Counters> {
    let postgres_cpu = postgres_cpu();
    let mut worker_cpu = process_cpu_time();
    for pid in children {
        let child = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| cpu_time_of_stat(&stat));
        worker_cpu = Some(worker_cpu.unwrap_or_default() + child.unwrap_or_default());
    }
    let wal_lsn = sqlx::query_scalar(sql::WAL_LSN).fetch_one(pool).await?;
    Ok(Counters {
        postgres_cpu,
        worker_cpu,
        wal_lsn,
    })
}

/// The tables' row counters, once every backend has reported its part:
/// backends report when a transaction ends at most once a second, and an
/// idle one after [`STATS_SETTLE`]; one that exits reports at once.
async fn table_stats(pool: &PgPool) -> anyhow::Result<TableStats> {
    tokio::time::sleep(STATS_SETTLE).await;
    let mut conn = pool.acquire().await?;
    sqlx::query(sql::CLEAR_STATS_SNAPSHOT)
        .execute(&mut *conn)
        .await?;
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(sql::TABLE_STATS)
        .fetch_all(&mut *conn)
        .await?;
    let transactions = sqlx::query_scalar(sql::TRANSACTIONS)
        .fetch_one(&mut *conn)
        .await?;
    Ok(TableStats {
        tables: rows
            .into_iter()
            .map(|(name, ins, upd, hot, del, idx)| (name, [ins, upd, hot, del, idx]))
            .collect(),
        transactions,
    })
}

async fn drain_work(
    pool: &PgPool,
    before: (&Counters, &TableStats),
    after: (&Counters, &TableStats),
    jobs: usize,
) -> anyhow::Result<DrainWork> {
    let per_job = |v: f64| v / jobs.max(1) as f64;
    let cpu = |a: Option<Duration>, b: Option<Duration>| {
        Some(per_job(b?.saturating_sub(a?).as_secs_f64() * 1e6))
    };
    let wal: f64 = sqlx::query_scalar(sql::WAL_DIFF)
        .bind(&after.0.wal_lsn)
        .bind(&before.0.wal_lsn)
        .fetch_one(pool)
        .await?;
    let mut work = DrainWork {
        postgres_cpu_us: cpu(before.0.postgres_cpu, after.0.postgres_cpu),
        worker_cpu_us: cpu(before.0.worker_cpu, after.0.worker_cpu),
        wal_bytes: per_job(wal),
        ..DrainWork::default()
    };
    work.transactions = per_job((after.1.transactions - before.1.transactions) as f64);
    for (table, a) in &after.1.tables {
        let b = before.1.tables.get(table).copied().unwrap_or_default();
        let d = |k: usize| (a[k] - b[k]) as f64;
        let (ins, upd, hot, del, indexes) = (d(0), d(1), d(2), d(3), a[4] as f64);
        work.heap_inserted += per_job(ins);
        work.heap_updated += per_job(upd);
        work.heap_hot_updated += per_job(hot);
        work.heap_deleted += per_job(del);
        work.index_entries += per_job((ins + upd - hot) * indexes);
    }
    Ok(work)
}

/// Creates the scratch database, runs every phase, drops the database.
pub async fn run(database_url: &str, args: &QueueBenchArgs) -> anyhow::Result<QueueBenchReport> {
    let pool_size = (args.producers + 2 * args.workers + 4) as u32;
    let scratch = Scratch::create(database_url, &args.bench_database, pool_size).await?;
    if let Some(path) = &args.after_migrate {
        let script = std::fs::read_to_string(path)?;
        sqlx::raw_sql(&script).execute(&scratch.pool).await?;
    }
    let result = phases(&scratch, args).await;
    scratch.drop().await?;
    let mut report = result?;
    if args.raw_ceiling {
        report.raw = Some(raw_ceiling(
            database_url,
            report.drained_jobs,
            args.processes.max(1),
        )?);
    }
    Ok(report)
}

async fn phases(scratch: &Scratch, args: &QueueBenchArgs) -> anyhow::Result<QueueBenchReport> {
    let pool = &scratch.pool;
    let bulk = enqueue_bulk(pool, args.jobs, args.batch).await?;
    eprintln!("bulk enqueue: {bulk:.0} jobs/s");
    let (single, single_enqueued) = enqueue_single(pool, args.single_jobs, args.producers).await?;
    eprintln!("single-row enqueue: {single:.0} jobs/s");
    queue::maintenance::vacuum_jobs(pool).await?;
    let drained = args.jobs + single_enqueued;
    let stats_before = table_stats(pool).await?;
    let (drain, before, after) = drain(scratch, drained, args.drainers()).await?;
    let stats_after = table_stats(pool).await?;
    let drain_work = drain_work(
        pool,
        (&before, &stats_before),
        (&after, &stats_after),
        drained,
    )
    .await?;
    eprintln!("drain: {drain:.0} jobs/s");
    // The drain leaves the claim index full of dead entries that each claim
    // would walk past until autovacuum (a minute at most with the table's
    // settings) removes them. Pickup is measured on an idle queue, as an
    // idle queue is once autovacuum has run.
    queue::maintenance::vacuum_jobs(pool).await?;
    let mut pickup = pickup(pool, args.pickup_samples, args.pickup_interval_ms).await?;
    pickup.sort_by(f64::total_cmp);
    Ok(QueueBenchReport {
        jobs: args.jobs,
        single_jobs: args.single_jobs,
        drained_jobs: drained,
        producers: args.producers,
        workers: args.workers,
        processes: args.processes,
        concurrency: args.concurrency,
        enqueue_bulk_jobs_per_s: bulk,
        enqueue_single_jobs_per_s: single,
        drain_jobs_per_s: drain,
        pickup_p50_ms: percentile(&pickup, 0.50),
        pickup_p95_ms: percentile(&pickup, 0.95),
        pickup_p99_ms: percentile(&pickup, 0.99),
        pickup_max_ms: pickup.last().copied().unwrap_or(0.0),
        drain_work,
        raw: None,
    })
}

fn noop_job(i: usize) -> NewJob {
    NewJob::new(NoopHandler::KIND, serde_json::json!({ "n": i }))
}

pub(crate) async fn enqueue_bulk(pool: &PgPool, jobs: usize, batch: usize) -> anyhow::Result<f64> {
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

/// Enqueues `jobs` one by one from `producers` connections (rounded down to
/// a multiple of them); the rate and the number enqueued.
async fn enqueue_single(
    pool: &PgPool,
    jobs: usize,
    producers: usize,
) -> anyhow::Result<(f64, usize)> {
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
    let enqueued = per_producer * producers.max(1);
    Ok((enqueued as f64 / start.elapsed().as_secs_f64(), enqueued))
}

/// Runs the workers until the queue is empty: the rate, and the work
/// counters read before the workers start and once the queue is empty,
/// before the workers stop (their connections, and the CPU the server spent
/// on them, go with them).
pub(crate) async fn drain(
    scratch: &Scratch,
    expected: usize,
    args: Drainers,
) -> anyhow::Result<(f64, Counters, Counters)> {
    let pool = &scratch.pool;
    let shutdown = CancellationToken::new();
    let mut runtimes = Vec::new();
    let mut children = Vec::new();
    let before = counters(pool, &[]).await?;
    let start = Instant::now();
    if args.processes > 0 {
        for _ in 0..args.processes {
            children.push(
                tokio::process::Command::new(std::env::current_exe()?)
                    .arg("drain-worker")
                    .args(["--concurrency", &args.concurrency.to_string()])
                    .args(["--max-claim", &args.max_claim.to_string()])
                    .env("DATABASE_URL", &scratch.url)
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
    } else {
        runtimes = spawn_drainers(
            pool,
            args.workers,
            (args.concurrency, args.max_claim),
            || NoopHandler,
            &shutdown,
        )?;
    }
    while queue::read::has_live_jobs(pool, None).await? {
        for child in &mut children {
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "a worker process ended before the queue was empty"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let after = counters(pool, &pids).await?;
    shutdown.cancel();
    for runtime in runtimes {
        runtime.await??;
    }
    for mut child in children {
        child.kill().await?;
    }
    let finished: i64 = sqlx::query_scalar(sql::FINISHED_JOBS)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        finished as usize == expected,
        "drained {finished} jobs, expected {expected}"
    );
    Ok((expected as f64 / elapsed.as_secs_f64(), before, after))
}

/// `skipjack-bench drain-worker`: one worker process of `--processes`.
#[derive(Clone, Debug, clap::Args)]
pub struct DrainWorkerArgs {
    /// Slots.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Jobs per claim statement.
    #[arg(long, default_value_t = 500)]
    pub max_claim: usize,
}

/// Runs no-op jobs of the database at `database_url` until killed.
pub async fn drain_worker(database_url: &str, args: &DrainWorkerArgs) -> anyhow::Result<()> {
    let pool = crate::scratch::connect(database_url, 8, "skipjack-bench-drain-worker").await?;
    let never = CancellationToken::new();
    for runtime in spawn_drainers(
        &pool,
        1,
        (args.concurrency, args.max_claim),
        || NoopHandler,
        &never,
    )? {
        runtime.await??;
    }
    Ok(())
}

/// Starts `workers` (at least one) worker runtimes in this process, each
/// running the handler `handler()` makes with `concurrency` slots and claims
/// of `max_claim`, and no maintenance, until `shutdown` is cancelled.
pub(crate) fn spawn_drainers<H: Handler>(
    pool: &PgPool,
    workers: usize,
    (concurrency, max_claim): (usize, usize),
    handler: impl Fn() -> H,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Result<(), skipjack::worker::WorkerError>>>> {
    let mut runtimes = Vec::new();
    for _ in 0..workers.max(1) {
        let worker = Worker::builder(pool.clone())
            .register(handler())
            .config(WorkerConfig {
                concurrency,
                max_claim,
                maintenance: None,
                ..WorkerConfig::default()
            })
            .build()?;
        let token = shutdown.clone();
        runtimes.push(tokio::spawn(async move { worker.run(token).await }));
    }
    Ok(runtimes)
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

pub(crate) async fn pickup(
    pool: &PgPool,
    samples: usize,
    interval_ms: u64,
) -> anyhow::Result<Vec<f64>> {
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
