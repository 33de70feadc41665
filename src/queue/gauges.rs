//! The queue gauges: depth by priority, the oldest ready job's age and the
//! jobs being processed, refreshed for Prometheus by one process at a time.
//!
//! # One query, one process
//! The numbers describe the whole queue, so one process is enough to read
//! them, and a scrape never counts anything: the gauges hold the last
//! reading. Every API and worker process runs [`spawn`]; each round, a
//! process that is not the leader tries a session advisory lock
//! (`sql/queue/gauges_lead.sql`) on a connection it then takes out of its
//! pool. The process holding the lock is the leader: it runs
//! `sql/queue/stats.sql` on that connection every `interval` and exports the
//! result; the others export none of these series (so `max` or `sum` over
//! all instances reads the leader's). When the leader dies or its
//! connection drops, the server releases the lock and another process takes
//! over within one interval. The API runs it too, so the gauges (and
//! autoscaling on them) keep working while there are no workers.
//!
//! Why a leader rather than every process at a modest interval: the depth is
//! a count, a scan of a small index (about 0.1 s per million queued jobs,
//! see `sql/queue/stats.sql`); forty processes counting a large backlog every
//! few seconds would add up to a busy core on the database for numbers
//! that are all the same.
//!
//! # Cost
//! Measured at a million queued jobs (BENCHMARKS.md, "Queue gauges"): the
//! query takes 70–125 ms when `jobs` is vacuumed (index-only scans, ~8 MB of
//! index), and up to ~0.85 s right after heavy churn, before autovacuum has
//! run again (claims all over the table clear its visibility map, so the
//! counted index entries need heap visits). At the default backpressure
//! limit (100,000 queued) it takes 13 ms, 75 ms after churn. The pause
//! after each reading is `interval`, or longer when the query was slow: at
//! most `max_duty_cycle` of the leader's time goes to it (5%: a 0.85 s
//! count is followed by a 16 s pause). `skipjack_queue_stats_query_seconds`
//! shows what it costs in production.

use super::{read, sql, QueueStats};
use crate::metrics::metrics;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The label values of the label-less gauge vectors.
const NO_LABELS: &[&str] = &[];

/// How often and how expensively the gauges are refreshed.
#[derive(Clone, Debug)]
pub struct GaugesConfig {
    /// Time between two readings (and between two leadership attempts of a
    /// process that is not the leader).
    pub interval: Duration,
    /// Largest share of the leader's time spent in the query; a slow query
    /// stretches the pause after it.
    pub max_duty_cycle: f64,
    /// A reading that takes longer is abandoned with its connection (and so
    /// the leadership), so a stuck query cannot freeze the gauges silently.
    pub query_timeout: Duration,
    /// The schema the process runs at: which statement reads the queue.
    pub schema: crate::db::Schema,
}

impl Default for GaugesConfig {
    fn default() -> Self {
        GaugesConfig {
            interval: Duration::from_secs(5),
            max_duty_cycle: 0.05,
            query_timeout: Duration::from_secs(10),
            schema: crate::db::Schema::current(),
        }
    }
}

impl GaugesConfig {
    /// The pause after a reading that took `took`.
    pub fn pause_after(&self, took: Duration) -> Duration {
        let duty = self.max_duty_cycle.clamp(0.001, 1.0);
        self.interval.max(took.mul_f64((1.0 - duty) / duty))
    }
}

/// Sets the process's queue gauges from a reading, or clears them (`None`:
/// this process is not the leader and exports none of these series).
pub fn export(stats: Option<&QueueStats>) {
    let m = metrics();
    match stats {
        Some(stats) => {
            // Every priority, zeros included, so that a series never
            // vanishes when its priority drains.
            for priority in 1..=10i16 {
                m.queue_depth
                    .with_label_values(&[&priority.to_string()])
                    .set(stats.depth.get(&priority).copied().unwrap_or(0));
            }
            m.queue_oldest_age
                .with_label_values(NO_LABELS)
                .set(stats.oldest_queued_age_seconds);
            m.jobs_processing
                .with_label_values(NO_LABELS)
                .set(stats.processing);
            // Only the tenants of this reading: one that stopped waiting
            // leaves the chart.
            m.tenant_oldest_age.reset();
            for (tenant, age) in &stats.tenant_waits {
                m.tenant_oldest_age.with_label_values(&[tenant]).set(*age);
            }
            m.queue_stats_updated
                .with_label_values(NO_LABELS)
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1e3);
            m.queue_stats_leader.set(1);
        }
        None => {
            m.queue_depth.reset();
            m.queue_oldest_age.reset();
            m.tenant_oldest_age.reset();
            m.jobs_processing.reset();
            m.queue_stats_updated.reset();
            m.queue_stats_leader.set(0);
        }
    }
}

/// Runs the gauges loop, exporting into the process's metrics, until `stop`.
pub fn spawn(pool: PgPool, config: GaugesConfig, stop: CancellationToken) -> JoinHandle<()> {
    spawn_with(pool, config, stop, export)
}

/// [`spawn`] with another destination for the readings: `sink(Some)` after
/// each reading of the leader, `sink(None)` in every round this process is
/// not the leader, and once more when it stops.
pub fn spawn_with<F>(
    pool: PgPool,
    config: GaugesConfig,
    stop: CancellationToken,
    mut sink: F,
) -> JoinHandle<()>
where
    F: FnMut(Option<&QueueStats>) + Send + 'static,
{
    tokio::spawn(async move {
        // The connection holding the leadership lock, while this process
        // leads.
        let mut leader: Option<PgConnection> = None;
        // Log a failing database once per outage, not every round.
        let mut failing = false;
        loop {
            if leader.is_none() {
                match try_lead(&pool).await {
                    Ok(Some(conn)) => {
                        tracing::info!("refreshing the queue gauges for all processes");
                        leader = Some(conn);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot try the queue gauges leadership");
                        }
                        failing = true;
                    }
                }
            }
            let mut took = Duration::ZERO;
            match leader.as_mut() {
                Some(conn) => {
                    let started = Instant::now();
                    match tokio::time::timeout(
                        config.query_timeout,
                        read::stats_at(&mut *conn, config.schema),
                    )
                    .await
                    {
                        Ok(Ok(stats)) => {
                            took = started.elapsed();
                            metrics().queue_stats_query.observe(took.as_secs_f64());
                            sink(Some(&stats));
                            failing = false;
                        }
                        outcome => {
                            let error = match outcome {
                                Ok(Err(error)) => error.to_string(),
                                _ => format!("no answer within {:?}", config.query_timeout),
                            };
                            tracing::warn!(%error, "queue gauges query failed; giving up the leadership");
                            // Dropping the connection ends the session, and
                            // the server releases the lock with it.
                            leader = None;
                            sink(None);
                        }
                    }
                }
                None => sink(None),
            }
            tokio::select! {
                // Shutting down: stop between readings.
                _ = stop.cancelled() => break,
                // The next reading (or leadership attempt).
                _ = tokio::time::sleep(config.pause_after(took)) => {}
            }
        }
        if let Some(conn) = leader {
            // Closing releases the lock at once for the next leader.
            let _ = conn.close().await;
        }
        sink(None);
    })
}

/// Takes the leadership if no process holds it: the connection that holds
/// the lock, out of the pool for good (a pooled connection would hand the
/// lock to whatever borrowed it next).
async fn try_lead(pool: &PgPool) -> sqlx::Result<Option<PgConnection>> {
    let mut conn = pool.acquire().await?;
    let won: bool = sqlx::query_scalar(sql::GAUGES_LEAD)
        .fetch_one(&mut *conn)
        .await?;
    Ok(won.then(|| conn.detach()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_readings_stretch_the_pause() {
        let config = GaugesConfig::default();
        // 0.13 s (a vacuumed million) costs less than 5% of 5 s.
        assert_eq!(
            config.pause_after(Duration::from_millis(130)),
            Duration::from_secs(5)
        );
        // 0.85 s (a million right after churn) at 5%: 16.15 s.
        let pause = config.pause_after(Duration::from_millis(850));
        assert!(pause > Duration::from_millis(16_100) && pause < Duration::from_millis(16_200));
    }
}
