//! `skipjack-bench horizon`: the queue while vacuum cannot help.
//!
//! A session left idle in a transaction (a forgotten psql, a long report, a
//! `pg_dump`) holds back the xmin horizon: no dead row or index entry can
//! be removed, and every claim walks past more of them. Runs in a
//! [`Scratch`] database:
//! 1. **clean drain**: `--drain-jobs` jobs bulk-enqueued and drained, the
//!    rate of a table with nothing dead in it;
//! 2. a second connection opens a `REPEATABLE READ` transaction, takes its
//!    snapshot and stays idle in it;
//! 3. **pickup under the held horizon**: `--jobs` jobs enqueued one at a
//!    time to one idle worker (at most one per `--interval-ms`), the time
//!    from the enqueue's commit to the handler starting, reported per
//!    window of `--window` jobs;
//! 4. **held drain**: `--drain-jobs` jobs again, drained with the horizon
//!    still held.

use crate::queue_bench::{self, Drainers};
use crate::{percentile, Scratch};
use serde::Serialize;
use sqlx::Connection;

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct HorizonBenchArgs {
    /// Jobs enqueued one at a time while the horizon is held.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Least time between two of those jobs (3 ms: at most about 300 a
    /// second).
    #[arg(long, default_value_t = 3)]
    pub interval_ms: u64,
    /// Pickup percentiles are reported per this many jobs.
    #[arg(long, default_value_t = 10_000)]
    pub window: usize,
    /// Jobs of each drain.
    #[arg(long, default_value_t = 50_000)]
    pub drain_jobs: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_bench_horizon")]
    pub bench_database: String,
}

/// Pickup latency over one window of jobs, in ms.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Jobs enqueued before this window.
    pub after_jobs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The numbers `skipjack-bench horizon --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct HorizonBenchReport {
    pub jobs: usize,
    pub drain_jobs: usize,
    pub clean_drain_jobs_per_s: f64,
    pub held_drain_jobs_per_s: f64,
    pub windows: Vec<Window>,
    /// Dead rows in `jobs` when the held drain started (`pg_stat`).
    pub dead_rows_at_end: i64,
}

impl HorizonBenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "skipjack-bench horizon ({} jobs one at a time with the xmin horizon held)\n\
             {:<12}{:>10}{:>10}{:>10}\n",
            self.jobs, "after jobs", "p50 ms", "p99 ms", "max ms"
        );
        for w in &self.windows {
            out += &format!(
                "{:<12}{:>10.2}{:>10.2}{:>10.2}\n",
                w.after_jobs, w.p50_ms, w.p99_ms, w.max_ms
            );
        }
        out += &format!(
            "drain of {} jobs, clean table      {:>10.0} jobs/s\n\
             drain of {} jobs, horizon held     {:>10.0} jobs/s ({:.0} % of clean)\n\
             dead rows in jobs at the end        {:>10}",
            self.drain_jobs,
            self.clean_drain_jobs_per_s,
            self.drain_jobs,
            self.held_drain_jobs_per_s,
            100.0 * self.held_drain_jobs_per_s / self.clean_drain_jobs_per_s.max(1e-9),
            self.dead_rows_at_end,
        );
        out
    }
}

/// Creates the scratch database, runs every phase, drops the database.
pub async fn run(
    database_url: &str,
    args: &HorizonBenchArgs,
) -> anyhow::Result<HorizonBenchReport> {
    let scratch = Scratch::create(database_url, &args.bench_database, 8).await?;
    let result = phases(&scratch, args).await;
    scratch.drop().await?;
    result
}

async fn drain(scratch: &Scratch, jobs: usize) -> anyhow::Result<f64> {
    queue_bench::enqueue_bulk(&scratch.pool, jobs, 5_000).await?;
    let already: i64 = sqlx::query_scalar(crate::sql::FINISHED_JOBS)
        .fetch_one(&scratch.pool)
        .await?;
    // The queue bench's default drainer: one runtime of 1,000 slots.
    let drainers = Drainers {
        workers: 1,
        processes: 0,
        concurrency: 1_000,
        max_claim: 500,
    };
    let (rate, _, _) = queue_bench::drain(scratch, already as usize + jobs, drainers).await?;
    Ok(rate)
}

async fn phases(scratch: &Scratch, args: &HorizonBenchArgs) -> anyhow::Result<HorizonBenchReport> {
    let clean = drain(scratch, args.drain_jobs).await?;
    eprintln!("clean drain: {clean:.0} jobs/s");
    skipjack::queue::maintenance::vacuum_jobs(&scratch.pool).await?;

    // The session that holds the horizon: a snapshot taken, then idle.
    let mut holder = sqlx::PgConnection::connect(&scratch.url).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM jobs;")
        .execute(&mut holder)
        .await?;

    let mut windows = Vec::new();
    let mut done = 0;
    while done < args.jobs {
        let n = args.window.min(args.jobs - done);
        let mut latencies = queue_bench::pickup(&scratch.pool, n, args.interval_ms).await?;
        latencies.sort_by(f64::total_cmp);
        let w = Window {
            after_jobs: done,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            max_ms: latencies.last().copied().unwrap_or(0.0),
        };
        eprintln!(
            "after {} jobs: pickup p50 {:.2} ms, p99 {:.2} ms",
            w.after_jobs, w.p50_ms, w.p99_ms
        );
        windows.push(w);
        done += n;
    }
    let dead: i64 = sqlx::query_scalar(crate::sql::DEAD_ROWS)
        .fetch_one(&scratch.pool)
        .await?;
    let held = drain(scratch, args.drain_jobs).await?;
    eprintln!("held drain: {held:.0} jobs/s");
    sqlx::query("ROLLBACK").execute(&mut holder).await?;
    holder.close().await?;
    Ok(HorizonBenchReport {
        jobs: args.jobs,
        drain_jobs: args.drain_jobs,
        clean_drain_jobs_per_s: clean,
        held_drain_jobs_per_s: held,
        windows,
        dead_rows_at_end: dead,
    })
}
