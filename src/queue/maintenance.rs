//! Maintenance: the background loop every worker process runs.
//!
//! Each tick rescues jobs whose lease expired. Every minute it vacuums
//! `jobs` if dead row versions piled up (autovacuum off or behind). Less
//! often it does the housekeeping: creates `job_history` partitions ahead of time, drops the
//! partitions older than the retention, and prunes idempotency keys, events
//! and stale waiters past their time. Every step is safe to run in all
//! processes at once (SKIP LOCKED, advisory locks, idempotent deletes).

use super::{lease, sql, Result};
use crate::metrics::metrics;
use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::PgPool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often and how far maintenance reaches.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    /// Time between rescue passes (jittered by ±20%).
    pub rescue_interval: Duration,
    /// Jobs rescued per statement.
    pub rescue_batch: usize,
    /// Time between housekeeping passes.
    pub housekeeping_interval: Duration,
    /// How long finished jobs (and their events and idempotency keys) are kept.
    pub retention: Duration,
    /// Days of `job_history` partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// Waiters not refreshed for this long are forgotten.
    pub waiter_ttl: Duration,
    /// Vacuum `jobs` when it holds more dead row versions than this (checked
    /// every `vacuum_check_interval`). Autovacuum normally does it, driven by
    /// the table's own settings; this covers servers where it is off or
    /// falls behind, where the claim would otherwise walk past ever more
    /// dead index entries.
    pub vacuum_dead_tuples: i64,
    pub vacuum_check_interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            rescue_interval: Duration::from_secs(5),
            rescue_batch: 1000,
            housekeeping_interval: Duration::from_secs(600),
            retention: Duration::from_secs(30 * 24 * 3600),
            partitions_ahead_days: 7,
            waiter_ttl: Duration::from_secs(120),
            vacuum_dead_tuples: 50_000,
            vacuum_check_interval: Duration::from_secs(60),
        }
    }
}

/// What one housekeeping pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HousekeepingReport {
    pub partitions_created: i32,
    pub partitions_dropped: i32,
    pub idempotency_keys_pruned: u64,
    pub events_pruned: u64,
    pub waiters_pruned: u64,
}

/// Rescues expired leases until none is left; returns how many jobs were
/// requeued and failed.
pub async fn rescue_expired(pool: &PgPool, batch: usize) -> Result<(usize, usize)> {
    let (mut requeued, mut failed) = (0, 0);
    loop {
        let report = lease::rescue(pool, batch).await?;
        let n = report.requeued.len() + report.failed.len();
        requeued += report.requeued.len();
        failed += report.failed.len();
        metrics()
            .jobs_rescued
            .with_label_values(&["requeued"])
            .inc_by(report.requeued.len() as u64);
        metrics()
            .jobs_rescued
            .with_label_values(&["failed"])
            .inc_by(report.failed.len() as u64);
        if n > 0 {
            tracing::warn!(
                requeued = report.requeued.len(),
                failed = report.failed.len(),
                "rescued jobs whose lease expired"
            );
        }
        if n < batch {
            return Ok((requeued, failed));
        }
    }
}

/// One housekeeping pass as of `now`.
pub async fn housekeeping(
    pool: &PgPool,
    config: &MaintenanceConfig,
    now: DateTime<Utc>,
) -> Result<HousekeepingReport> {
    const PRUNE_BATCH: i64 = 5000;
    let today = now.date_naive();
    let (created,): (i32,) = sqlx::query_as(sql::ENSURE_PARTITIONS)
        .bind(today - chrono::Days::new(1))
        .bind(today + chrono::Days::new(config.partitions_ahead_days as u64))
        .fetch_one(pool)
        .await?;
    let cutoff =
        now - chrono::Duration::from_std(config.retention).unwrap_or(chrono::Duration::MAX);
    let mut report = HousekeepingReport {
        partitions_created: created,
        ..Default::default()
    };
    // Idempotency keys go before the partitions holding their jobs do.
    for (statement, total) in [
        (
            sql::PRUNE_IDEMPOTENCY_KEYS,
            &mut report.idempotency_keys_pruned,
        ),
        (sql::PRUNE_EVENTS, &mut report.events_pruned),
    ] {
        loop {
            let n = sqlx::query(statement)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            *total += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
    }
    let (dropped,): (i32,) = sqlx::query_as(sql::DROP_PARTITIONS)
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
    report.partitions_dropped = dropped;
    report.waiters_pruned = sqlx::query(sql::PRUNE_WAITERS)
        .bind(config.waiter_ttl.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    Ok(report)
}

/// Vacuums `jobs` when it holds more than `threshold` dead row versions and
/// no other process is vacuuming it; returns whether it vacuumed.
pub async fn vacuum_if_needed(pool: &PgPool, threshold: i64) -> Result<bool> {
    let dead: i64 = sqlx::query_scalar(sql::DEAD_TUPLES).fetch_one(pool).await?;
    if dead <= threshold {
        return Ok(false);
    }
    // A session lock, on one connection throughout: VACUUM cannot run inside
    // a transaction, so a transaction-scoped lock would not cover it.
    let mut conn = pool.acquire().await?;
    let held: bool = sqlx::query_scalar(sql::VACUUM_LOCK)
        .bind(true)
        .fetch_one(&mut *conn)
        .await?;
    if !held {
        return Ok(false);
    }
    let vacuumed = sqlx::query(sql::VACUUM_JOBS).execute(&mut *conn).await;
    sqlx::query_scalar::<_, bool>(sql::VACUUM_LOCK)
        .bind(false)
        .fetch_one(&mut *conn)
        .await?;
    vacuumed?;
    tracing::info!(dead_tuples = dead, "vacuumed the jobs table");
    Ok(true)
}

/// Runs rescue passes and housekeeping until `shutdown` is cancelled.
pub fn spawn(
    pool: PgPool,
    config: MaintenanceConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_housekeeping: Option<tokio::time::Instant> = None;
        let mut last_vacuum_check = tokio::time::Instant::now();
        loop {
            if let Err(error) = rescue_expired(&pool, config.rescue_batch).await {
                tracing::warn!(%error, "rescue pass failed");
            }
            let due = last_housekeeping.is_none_or(|t| t.elapsed() >= config.housekeeping_interval);
            if due {
                match housekeeping(&pool, &config, Utc::now()).await {
                    Ok(report) => tracing::debug!(?report, "housekeeping done"),
                    Err(error) => tracing::warn!(%error, "housekeeping failed"),
                }
                last_housekeeping = Some(tokio::time::Instant::now());
            }
            if last_vacuum_check.elapsed() >= config.vacuum_check_interval {
                if let Err(error) = vacuum_if_needed(&pool, config.vacuum_dead_tuples).await {
                    tracing::warn!(%error, "vacuum check failed");
                }
                last_vacuum_check = tokio::time::Instant::now();
            }
            let jitter = rand::thread_rng().gen_range(0.8..1.2);
            tokio::select! {
                // Stop between passes, never in the middle of one.
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(config.rescue_interval.mul_f64(jitter)) => {}
            }
        }
    })
}
