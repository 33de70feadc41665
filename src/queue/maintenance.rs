//! Maintenance: the background loop every worker process runs.
//!
//! Each tick rescues jobs whose lease expired, clears the tenant queues left
//! empty (and activates any that holds a job), and raises the tenant queues
//! that waited too long for a turn (aging, docs/scheduling.md). Every ten
//! seconds it vacuums `jobs` if dead row versions piled up (autovacuum off
//! or behind) or the table outgrew its statistics. Less
//! often it does the housekeeping: creates `job_history` partitions ahead of
//! time, drops the partitions older than the retention, and prunes
//! idempotency keys, events, stale waiters and the ordering rows of idle
//! conversations past their time. Every step is safe to run in all
//! processes at once (SKIP LOCKED, advisory locks, idempotent deletes).
//!
//! # Maintenance never stalls the queue
//! Creating or dropping a partition needs locks that a long reader of
//! `job_history` (a `pg_dump`, a month-wide audit query) holds against it,
//! and a lock request that waits makes every later request on the table
//! wait behind it: completions and the API's reads would stall for as long
//! as the reader runs. So each partition is created or dropped in a
//! transaction of its own under a short `lock_timeout`
//! ([`MaintenanceConfig::lock_timeout`]); one that times out is counted
//! (`skipjack_maintenance_lock_timeouts_total`), logged once per pass as a
//! warning, reported in [`HousekeepingReport::partitions_skipped`], and
//! retried by the next pass, which comes after
//! [`MaintenanceConfig::housekeeping_retry_interval`] instead of the full
//! interval. After one timeout the pass skips the rest of that kind of step:
//! they need the same lock, so a pass delays the queue by at most
//! `lock_timeout` per kind of step.

use super::{lease, sql, QueueError, Result};
use crate::metrics::metrics;
use chrono::{DateTime, NaiveDate, Utc};
use rand::Rng;
use sqlx::{PgPool, Postgres, Transaction};
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
    /// Time to the next housekeeping pass after one that left partitions
    /// for later (a lock timeout).
    pub housekeeping_retry_interval: Duration,
    /// Longest a partition step waits for its locks before it gives up and
    /// leaves the partition for the next pass. Every request on
    /// `job_history` that comes meanwhile waits behind it, so keep it short.
    pub lock_timeout: Duration,
    /// How long finished jobs (and their events and idempotency keys) are kept.
    pub retention: Duration,
    /// Days of `job_history` partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// Waiters not refreshed for this long are forgotten.
    pub waiter_ttl: Duration,
    /// A conversation with no live job and no job finished for this long
    /// loses its `conversation_queues` row (its next enqueue creates it
    /// again).
    pub conversation_idle: Duration,
    /// Vacuum `jobs` when it holds more dead row versions than this, or has
    /// outgrown its statistics (checked every `vacuum_check_interval`).
    /// Autovacuum normally does it, driven by the table's own settings;
    /// this covers servers where it is off or falls behind, where the claim
    /// would otherwise walk past ever more dead index entries, and plans
    /// made on a nearly empty table would read all of it.
    pub vacuum_dead_tuples: i64,
    /// How often the dead row versions and the size of `jobs` are checked.
    pub vacuum_check_interval: Duration,
    /// The schema the process runs at: aging needs
    /// [`super::FAIR_VERSION`].
    pub schema: crate::db::Schema,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            rescue_interval: Duration::from_secs(5),
            rescue_batch: 1000,
            housekeeping_interval: Duration::from_secs(600),
            housekeeping_retry_interval: Duration::from_secs(60),
            lock_timeout: Duration::from_millis(100),
            retention: Duration::from_secs(30 * 24 * 3600),
            partitions_ahead_days: 7,
            waiter_ttl: Duration::from_secs(120),
            conversation_idle: Duration::from_secs(24 * 3600),
            vacuum_dead_tuples: 50_000,
            vacuum_check_interval: Duration::from_secs(10),
            schema: crate::db::Schema::current(),
        }
    }
}

/// What one housekeeping pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HousekeepingReport {
    /// History partitions created ahead.
    pub partitions_created: i32,
    /// History partitions dropped past retention.
    pub partitions_dropped: i32,
    /// Partitions (table names) due to be created or dropped that this pass
    /// left for the next one because their locks were not free within the
    /// lock timeout.
    pub partitions_skipped: Vec<String>,
    /// Whether deleting the default partition's expired rows was left for
    /// the next pass (lock timeout).
    pub history_default_skipped: bool,
    /// Idempotency keys past their time, deleted.
    pub idempotency_keys_pruned: u64,
    /// Job events past retention, deleted.
    pub events_pruned: u64,
    /// Long-poll waiters not seen for a while, deleted.
    pub waiters_pruned: u64,
    /// Idle conversation queues (no live job), deleted.
    pub conversations_pruned: u64,
}

impl HousekeepingReport {
    /// Whether the pass left work for the next one.
    pub fn skipped_anything(&self) -> bool {
        !self.partitions_skipped.is_empty() || self.history_default_skipped
    }
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

/// Raises the effective priority of the tenant queues that waited for a
/// turn longer than the aging rate allows (`sql/queue/age.sql`,
/// docs/scheduling.md); returns how many were raised. Run by every rescue
/// pass, so a queue waits at most one pass interval longer than its aging
/// bound.
pub async fn age_queues(pool: &PgPool) -> Result<usize> {
    let raised = sqlx::query(sql::AGE).fetch_all(pool).await?.len();
    if raised > 0 {
        metrics().queues_aged.inc_by(raised as u64);
        tracing::debug!(raised, "raised waiting tenant queues");
    }
    Ok(raised)
}

/// Keeps the tenant queues that claims visit exact
/// (`sql/queue/sweep_queues.sql`): clears the ones left empty and activates
/// any inactive one holding a queued job (an enqueue that raced with a
/// clear). Returns (activated, cleared).
pub async fn sweep_queues(pool: &PgPool) -> Result<(i64, i64)> {
    let (activated, cleared): (i64, i64) =
        sqlx::query_as(sql::SWEEP_QUEUES).fetch_one(pool).await?;
    if activated > 0 {
        tracing::debug!(activated, "tenant queues holding jobs activated again");
    }
    Ok((activated, cleared))
}

/// The table name of `job_history`'s partition for `day`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("job_history_p{}", day.format("%Y%m%d"))
}

/// True for the error a statement gets when `lock_timeout` expired.
fn is_lock_timeout(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03")
}

/// A transaction whose lock waits give up after `timeout`.
async fn begin_with_lock_timeout(
    pool: &PgPool,
    timeout: Duration,
) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    // 0 would mean "wait forever" to Postgres.
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    sqlx::query(sql::MAINTENANCE_LOCK_TIMEOUT)
        .bind(ms)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Runs `statement` (one of the per-partition steps, `$1` the day) alone in
/// a transaction under the lock timeout. `Ok(None)`: the locks were not free
/// in time and nothing changed.
async fn partition_step(
    pool: &PgPool,
    statement: &str,
    step: &str,
    day: NaiveDate,
    lock_timeout: Duration,
) -> Result<Option<bool>> {
    let mut tx = begin_with_lock_timeout(pool, lock_timeout).await?;
    match sqlx::query_scalar::<_, bool>(statement)
        .bind(day)
        .fetch_one(&mut *tx)
        .await
    {
        Ok(done) => {
            tx.commit().await?;
            Ok(Some(done))
        }
        Err(error) if is_lock_timeout(&error) => {
            tx.rollback().await?;
            metrics()
                .maintenance_lock_timeouts
                .with_label_values(&[step])
                .inc();
            tracing::debug!(step, partition = %partition_name(day), "lock timeout");
            Ok(None)
        }
        Err(error) => Err(QueueError::Database(error)),
    }
}

/// Runs one per-partition `statement` (create or drop) for each of `days`,
/// each in a transaction of its own; counts what it did in `done` and lists
/// what it left for the next pass in `report.partitions_skipped`.
async fn partition_steps(
    pool: &PgPool,
    config: &MaintenanceConfig,
    days: Vec<NaiveDate>,
    (statement, step): (&str, &str),
    done: &mut i32,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let mut busy = false;
    for day in days {
        // Every partition of a kind needs the same contended lock (the
        // default partition's, or job_history's): after one timeout the
        // others would only add their own wait.
        if busy {
            skipped.push(partition_name(day));
            continue;
        }
        match partition_step(pool, statement, step, day, config.lock_timeout).await? {
            Some(true) => *done += 1,
            // Another process got there first.
            Some(false) => {}
            None => {
                busy = true;
                skipped.push(partition_name(day));
            }
        }
    }
    Ok(())
}

/// Pages through `conversation_queues`, deleting the rows of conversations
/// with no live job and no job finished since `idle_since`; returns how
/// many. Safe against concurrent enqueues (see
/// `sql/queue/prune_conversation_queues.sql`).
pub async fn prune_idle_conversations(
    pool: &PgPool,
    idle_since: DateTime<Utc>,
    batch: i64,
) -> Result<u64> {
    let mut after: Option<uuid::Uuid> = None;
    let mut pruned = 0u64;
    loop {
        let (last, n): (Option<uuid::Uuid>, i64) = sqlx::query_as(sql::PRUNE_CONVERSATION_QUEUES)
            .bind(after)
            .bind(idle_since)
            .bind(batch)
            .fetch_one(pool)
            .await?;
        pruned += u64::try_from(n).unwrap_or(0);
        match last {
            Some(last) => after = Some(last),
            None => return Ok(pruned),
        }
    }
}

/// One housekeeping pass as of `now`. Partition steps that cannot get their
/// locks within [`MaintenanceConfig::lock_timeout`] are left for the next
/// pass and listed in the report; they are not errors.
pub async fn housekeeping(
    pool: &PgPool,
    config: &MaintenanceConfig,
    now: DateTime<Utc>,
) -> Result<HousekeepingReport> {
    const PRUNE_BATCH: i64 = 5000;
    let today = now.date_naive();
    let cutoff =
        now - chrono::Duration::from_std(config.retention).unwrap_or(chrono::Duration::MAX);
    let mut report = HousekeepingReport::default();
    let missing: Vec<NaiveDate> = sqlx::query_scalar(sql::MISSING_PARTITIONS)
        .bind(today - chrono::Days::new(1))
        .bind(today + chrono::Days::new(config.partitions_ahead_days as u64))
        .fetch_all(pool)
        .await?;
    partition_steps(
        pool,
        config,
        missing,
        (sql::CREATE_PARTITION, "create_partition"),
        &mut report.partitions_created,
        &mut report.partitions_skipped,
    )
    .await?;
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
    let expired: Vec<NaiveDate> = sqlx::query_scalar(sql::EXPIRED_PARTITIONS)
        .bind(cutoff)
        .fetch_all(pool)
        .await?;
    partition_steps(
        pool,
        config,
        expired,
        (sql::DROP_PARTITION, "drop_partition"),
        &mut report.partitions_dropped,
        &mut report.partitions_skipped,
    )
    .await?;
    {
        // Row locks only, but an attach by another process holds the
        // default partition exclusively: do not queue behind it either.
        let mut tx = begin_with_lock_timeout(pool, config.lock_timeout).await?;
        match sqlx::query(sql::PRUNE_HISTORY_DEFAULT)
            .bind(cutoff)
            .execute(&mut *tx)
            .await
        {
            Ok(_) => tx.commit().await?,
            Err(error) if is_lock_timeout(&error) => {
                tx.rollback().await?;
                metrics()
                    .maintenance_lock_timeouts
                    .with_label_values(&["prune_history_default"])
                    .inc();
                report.history_default_skipped = true;
            }
            Err(error) => return Err(error.into()),
        }
    }
    report.waiters_pruned = sqlx::query(sql::PRUNE_WAITERS)
        .bind(config.waiter_ttl.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    let idle_since =
        now - chrono::Duration::from_std(config.conversation_idle).unwrap_or(chrono::Duration::MAX);
    report.conversations_pruned = prune_idle_conversations(pool, idle_since, PRUNE_BATCH).await?;
    if report.skipped_anything() {
        tracing::warn!(
            skipped = ?report.partitions_skipped,
            history_default = report.history_default_skipped,
            lock_timeout_ms = config.lock_timeout.as_millis() as u64,
            "partition maintenance left work for the next pass: its locks were held \
             (a long-running reader of job_history?)"
        );
    }
    Ok(report)
}

/// Vacuums and analyses `jobs` now, whatever its dead row versions: for a
/// benchmark that measures an idle or freshly filled queue, as it is once
/// autovacuum has run.
pub async fn vacuum_jobs(pool: &PgPool) -> Result<()> {
    sqlx::query(sql::VACUUM_JOBS).execute(pool).await?;
    Ok(())
}

/// Vacuums and analyzes `jobs` when it holds more than `threshold` dead row
/// versions, or has outgrown its statistics (twice the pages it had when
/// last analyzed), and no other process is vacuuming it; returns whether it
/// vacuumed. The second keeps the plans on `jobs` in step with the table:
/// every connection plans again after it, where a generic plan made on the
/// nearly empty table of a new database would otherwise keep reading all of
/// it as it grows with dead rows (BENCHMARKS.md).
///
/// The one-at-a-time lock is a session advisory lock (VACUUM cannot run in
/// a transaction, so a transaction-scoped lock could not cover it), taken on
/// a pooled connection that is closed afterwards instead of going back to
/// the pool, on every path: success, error, and cancellation (the future
/// dropped mid-vacuum, e.g. at shutdown), where the connection is closed on
/// drop. A lock left on a pooled connection would stop every process from
/// vacuuming until that connection happened to be closed.
pub async fn vacuum_if_needed(pool: &PgPool, threshold: i64) -> Result<bool> {
    let (dead, outgrown): (i64, bool) = sqlx::query_as(sql::DEAD_TUPLES).fetch_one(pool).await?;
    if dead <= threshold && !outgrown {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
    let held: bool = sqlx::query_scalar(sql::VACUUM_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !held {
        return Ok(false);
    }
    let vacuumed = sqlx::query(sql::VACUUM_JOBS).execute(&mut *conn).await;
    // Ends the session, and with it the lock; an error closing it changes
    // nothing about that.
    let _ = conn.close().await;
    vacuumed?;
    tracing::info!(dead_tuples = dead, outgrown, "vacuumed the jobs table");
    Ok(true)
}

/// Runs rescue passes and housekeeping until `shutdown` is cancelled.
pub fn spawn(
    pool: PgPool,
    config: MaintenanceConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // When the next housekeeping pass is due (now at start-up).
        let mut next_housekeeping = tokio::time::Instant::now();
        let mut last_vacuum_check = tokio::time::Instant::now();
        loop {
            if let Err(error) = rescue_expired(&pool, config.rescue_batch).await {
                tracing::warn!(%error, "rescue pass failed");
            }
            if config.schema.has(super::FAIR_VERSION) {
                if let Err(error) = sweep_queues(&pool).await {
                    tracing::warn!(%error, "tenant queue sweep failed");
                }
                if let Err(error) = age_queues(&pool).await {
                    tracing::warn!(%error, "aging pass failed");
                }
            }
            if tokio::time::Instant::now() >= next_housekeeping {
                let mut wait = config.housekeeping_interval;
                match housekeeping(&pool, &config, Utc::now()).await {
                    Ok(report) => {
                        if report.skipped_anything() {
                            wait = wait.min(config.housekeeping_retry_interval);
                        }
                        tracing::debug!(?report, "housekeeping done");
                    }
                    Err(error) => {
                        wait = wait.min(config.housekeeping_retry_interval);
                        tracing::warn!(%error, "housekeeping failed");
                    }
                }
                next_housekeeping = tokio::time::Instant::now() + wait;
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
