//! Schema, migrations and housekeeping: the unmigrated-database check,
//! partitions created ahead, retention by partition, pruning.

mod common;

use chrono::{Duration as ChronoDuration, Utc};
use common::{admin_url, count, TestDb};
use serde_json::json;
use skipjack::db::{self, DbError};
use skipjack::queue::maintenance::{housekeeping, MaintenanceConfig};
use skipjack::queue::{self, NewJob};
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// An empty database (not from the migrated template), dropped afterwards.
struct EmptyDb {
    name: String,
    url: String,
}

impl EmptyDb {
    async fn new() -> EmptyDb {
        let name = format!("skipjack_test_empty_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = db::with_database(&admin_url(), &name);
        EmptyDb { name, url }
    }

    async fn drop_it(self) {
        let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_until_migrated() {
    let empty = EmptyDb::new().await;
    let pool = sqlx::PgPool::connect(&empty.url).await.unwrap();
    assert!(matches!(
        db::check_schema(&pool).await,
        Err(DbError::NotMigrated { applied: None, .. })
    ));

    // The worker binary says so and exits non-zero.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("DATABASE_URL", &empty.url)
        .env("SKIPJACK_WORKER_ADDR", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not migrated") && stderr.contains("skipjack migrate"),
        "{stderr}"
    );

    // `skipjack migrate` applies the migrations; a second run has nothing to do.
    let migrate = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
            .arg("migrate")
            .env("DATABASE_URL", &empty.url)
            .output()
    };
    let first = migrate().await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("applied V1__initial_schema"));
    let second = migrate().await.unwrap();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("up to date"));
    db::check_schema(&pool).await.unwrap();
    pool.close().await;
    empty.drop_it().await;
}

#[tokio::test]
async fn live_table_is_tuned_for_churn_and_constrained() {
    let db = TestDb::new().await;
    let options: Vec<String> =
        sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE relname = 'jobs'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(options.contains(&"fillfactor=70".to_owned()), "{options:?}");
    assert!(options
        .iter()
        .any(|o| o.starts_with("autovacuum_vacuum_scale_factor=")));
    // A processing job must carry a lease.
    let err = sqlx::query(
        "INSERT INTO jobs (id, kind, state) VALUES (gen_random_uuid(), 'x', 'processing')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("23514")
    );
    // Finished states never live in the queue table.
    let err = sqlx::query(
        "INSERT INTO jobs (id, kind, state) VALUES (gen_random_uuid(), 'x', 'completed')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("23514")
    );
}

async fn insert_history(pool: &sqlx::PgPool, finished_days_ago: i64) {
    sqlx::query(
        "INSERT INTO job_history (id, kind, priority, state, payload, attempts, max_attempts,
                                  created_at, finished_at)
         VALUES (gen_random_uuid(), 'test', 1, 'completed', '{}', 1, 5,
                 now() - make_interval(days => $1::int), now() - make_interval(days => $1::int))",
    )
    .bind(finished_days_ago as i32)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn retention_drops_whole_partitions_and_creates_future_ones() {
    let db = TestDb::new().await;
    let today = Utc::now().date_naive();
    // A partition for a day 40 days ago, as if created back then.
    let old_day = today - chrono::Days::new(40);
    sqlx::query("SELECT skipjack_ensure_history_partitions($1, $1)")
        .bind(old_day)
        .execute(&db.pool)
        .await
        .unwrap();
    insert_history(&db.pool, 40).await;
    insert_history(&db.pool, 40).await;
    insert_history(&db.pool, 100).await; // no partition for it: the default one
    insert_history(&db.pool, 0).await;
    let old_partition = format!("job_history_p{}", old_day.format("%Y%m%d"));
    assert_eq!(
        count(&db.pool, &format!("SELECT count(*) FROM {old_partition}")).await,
        2
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM job_history_default").await,
        1
    );

    // Old idempotency keys go too, unless their job is still live.
    let mut conn = db.pool.acquire().await.unwrap();
    let live = queue::enqueue(
        &mut conn,
        &NewJob::new("test", json!({})).with_idempotency_key("live"),
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO idempotency_keys (tenant_id, key, job_id, created_at)
                 VALUES ('00000000-0000-0000-0000-000000000000', 'stale', gen_random_uuid(), now() - interval '90 days')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '90 days' WHERE job_id = $1",
    )
    .bind(live.id)
    .execute(&db.pool)
    .await
    .unwrap();

    // Events older than the retention go as well.
    sqlx::query(
        "INSERT INTO job_events (job_id, event, attempt, created_at)
                 VALUES (gen_random_uuid(), 'retried', 1, now() - interval '45 days'),
                        (gen_random_uuid(), 'retried', 1, now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let config = MaintenanceConfig {
        retention: Duration::from_secs(30 * 86_400),
        partitions_ahead_days: 10,
        ..Default::default()
    };
    let report = housekeeping(&db.pool, &config, Utc::now()).await.unwrap();
    assert_eq!(report.partitions_dropped, 1);
    assert_eq!(report.idempotency_keys_pruned, 1);
    assert_eq!(report.events_pruned, 1);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM job_events").await, 1);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&old_partition)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(exists, None, "the old partition is dropped whole");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM job_history").await,
        1,
        "only the recent row is kept"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM idempotency_keys").await,
        1,
        "the live job's key stays"
    );
    // Partitions exist ahead of time, up to today + 10.
    let ahead = today + chrono::Days::new(10);
    let ahead_partition: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("job_history_p{}", ahead.format("%Y%m%d")))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(ahead_partition.is_some());
    // A second pass has nothing left to do.
    let again = housekeeping(&db.pool, &config, Utc::now() + ChronoDuration::seconds(1))
        .await
        .unwrap();
    assert_eq!((again.partitions_created, again.partitions_dropped), (0, 0));
}

#[tokio::test]
async fn a_late_partition_takes_over_rows_from_the_default_one() {
    let db = TestDb::new().await;
    let future_day = Utc::now().date_naive() + chrono::Days::new(20);
    sqlx::query(
        "INSERT INTO job_history (id, kind, priority, state, payload, attempts, max_attempts, created_at, finished_at)
         VALUES (gen_random_uuid(), 'test', 1, 'completed', '{}', 1, 5, now(), $1::date + time '12:00')",
    )
    .bind(future_day)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM job_history_default").await,
        1
    );
    let created: i32 = sqlx::query_scalar("SELECT skipjack_ensure_history_partitions($1, $1)")
        .bind(future_day)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(created, 1);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM job_history_default").await,
        0
    );
    assert_eq!(
        count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM job_history_p{}",
                future_day.format("%Y%m%d")
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn maintenance_analyzes_the_jobs_table_once_it_outgrows_its_statistics() {
    use skipjack::queue::maintenance::vacuum_if_needed;
    let db = TestDb::new().await;
    let pages = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT pg_relation_size('jobs') / current_setting('block_size')::bigint, \
                    relpages::bigint FROM pg_class WHERE oid = 'jobs'::regclass",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..6000)
        .map(|i| NewJob::new("test", json!({ "i": i })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    drop(conn);
    let (size, analyzed) = pages().await;
    assert!(
        size > 64 && size > 2 * analyzed,
        "{size} pages, {analyzed} analyzed"
    );
    // No dead row at all: the size alone asks for it.
    assert!(vacuum_if_needed(&db.pool, i64::MAX).await.unwrap());
    let (size, analyzed) = pages().await;
    assert_eq!(analyzed, size);
    assert!(
        !vacuum_if_needed(&db.pool, i64::MAX).await.unwrap(),
        "the statistics match the table now"
    );
}

#[tokio::test]
async fn maintenance_vacuums_the_jobs_table_when_dead_rows_pile_up() {
    use skipjack::queue::maintenance::vacuum_if_needed;
    let db = TestDb::new().await;
    let dead = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert!(
        !vacuum_if_needed(&db.pool, 1000).await.unwrap(),
        "nothing to vacuum yet"
    );
    let mut conn = db.pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..3000)
        .map(|i| NewJob::new("test", json!({ "i": i })))
        .collect();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    sqlx::query("DELETE FROM jobs")
        .execute(&mut *conn)
        .await
        .unwrap();
    // Statistics reach the shared counters when a session flushes them.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    common::eventually(Duration::from_secs(10), "dead tuples counted", || async {
        dead().await >= 3000
    })
    .await;
    assert!(vacuum_if_needed(&db.pool, 1000).await.unwrap());
    common::eventually(Duration::from_secs(10), "dead tuples gone", || async {
        dead().await == 0
    })
    .await;
}
