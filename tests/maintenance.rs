//! Maintenance against a real Postgres: partition steps that give up on
//! their locks instead of stalling the queue behind a long reader, pruning
//! of idle conversations against concurrent enqueues, and the vacuum lock
//! on cancellation and failure.

mod common;

use chrono::Utc;
use common::TestDb;
use serde_json::json;
use skipjack::ids::{ConversationId, JobId};
use skipjack::metrics::metrics;
use skipjack::queue::maintenance::{
    housekeeping, partition_name, prune_idle_conversations, vacuum_if_needed, MaintenanceConfig,
};
use skipjack::queue::{self, finish::finish_one, Backoff, JobState, NewJob, Outcome};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);
/// Generous bound for steps that must not hang; never a timing assertion.
const NO_HANG: Duration = Duration::from_secs(30);

fn kinds() -> Vec<String> {
    vec!["test".to_owned()]
}

fn done() -> Outcome {
    Outcome::Completed {
        result: json!({"ok": true}),
        usage: None,
    }
}

async fn enqueue(pool: &PgPool, job: NewJob) -> JobId {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &job).await.unwrap().id
}

async fn relation_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
        .is_some()
}

/// Lock requests on job_history or any of its partitions that are waiting
/// (in this test's database).
async fn job_history_lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
         WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND NOT l.granted AND c.relname LIKE 'job_history%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn in_open_transaction(pool: &PgPool, pid: i32) -> bool {
    sqlx::query_scalar("SELECT state = 'idle in transaction' FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn partition_maintenance_behind_a_long_reader_skips_and_the_queue_keeps_moving() {
    let db = TestDb::new().await;
    let today = Utc::now().date_naive();
    // Due work: one partition past the retention to drop, one missing ahead.
    let old_day = today - chrono::Days::new(40);
    let missing_day = today + chrono::Days::new(3);
    sqlx::query("SELECT skipjack_create_history_partition($1)")
        .bind(old_day)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "DROP TABLE IF EXISTS {}",
        partition_name(missing_day)
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let job = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let claimed = queue::claim(&db.pool, "w", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, job);

    // The long reader: an open transaction that has read job_history (every
    // partition, the default one included), as a pg_dump or an audit query
    // holds it.
    let mut reader = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("SELECT count(*) FROM job_history")
        .execute(&mut reader)
        .await
        .unwrap();
    let reader_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut reader)
        .await
        .unwrap();

    let timeouts = |step: &str| {
        metrics()
            .maintenance_lock_timeouts
            .with_label_values(&[step])
            .get()
    };
    let (creates_before, drops_before) = (timeouts("create_partition"), timeouts("drop_partition"));
    // A lock timeout long enough to see the step wait, as the short default
    // would be too fast to observe.
    let config = MaintenanceConfig {
        lock_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let pass = {
        let (pool, config) = (db.pool.clone(), config.clone());
        tokio::spawn(async move { housekeeping(&pool, &config, Utc::now()).await })
    };
    common::eventually(NO_HANG, "maintenance waits for its lock", || async {
        job_history_lock_waiters(&db.pool).await > 0
    })
    .await;

    // Meanwhile the queue moves: a finish (inserting into job_history) and
    // a read of the job (reading every partition) both complete, while the
    // reader's transaction is still open.
    let state = tokio::time::timeout(
        NO_HANG,
        finish_one(&db.pool, &claimed.lease("w"), &done(), &Backoff::default()),
    )
    .await
    .expect("the finish is not stalled behind maintenance")
    .unwrap();
    assert_eq!(state, JobState::Completed);
    let view = tokio::time::timeout(NO_HANG, queue::get(&db.pool, job, None))
        .await
        .expect("the read is not stalled behind maintenance")
        .unwrap()
        .unwrap();
    assert_eq!(view.state, JobState::Completed);
    assert!(in_open_transaction(&db.pool, reader_pid).await);

    let report = tokio::time::timeout(NO_HANG, pass)
        .await
        .expect("the pass gives up instead of waiting for the reader")
        .unwrap()
        .expect("lock timeouts are not errors");
    assert_eq!(
        (report.partitions_created, report.partitions_dropped),
        (0, 0)
    );
    assert!(
        report
            .partitions_skipped
            .contains(&partition_name(missing_day)),
        "{report:?}"
    );
    assert!(
        report.partitions_skipped.contains(&partition_name(old_day)),
        "{report:?}"
    );
    assert!(report.skipped_anything());
    assert!(timeouts("create_partition") > creates_before);
    assert!(timeouts("drop_partition") > drops_before);
    // Nothing is left queued behind maintenance, and the reader is still in
    // its transaction.
    assert_eq!(job_history_lock_waiters(&db.pool).await, 0);
    assert!(in_open_transaction(&db.pool, reader_pid).await);

    // With the short default timeout, a pass during the read also returns,
    // and the queue still moves afterwards.
    let short = MaintenanceConfig::default();
    let again = tokio::time::timeout(NO_HANG, housekeeping(&db.pool, &short, Utc::now()))
        .await
        .expect("the pass gives up")
        .unwrap();
    assert!(again.partitions_skipped.contains(&partition_name(old_day)));
    let second = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let claimed = queue::claim(&db.pool, "w", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, second);
    finish_one(&db.pool, &claimed.lease("w"), &done(), &Backoff::default())
        .await
        .unwrap();
    assert!(in_open_transaction(&db.pool, reader_pid).await);

    // The reader ends: the next pass does what was left.
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    let report = housekeeping(&db.pool, &short, Utc::now()).await.unwrap();
    assert!(report.partitions_skipped.is_empty(), "{report:?}");
    assert!(report.partitions_created >= 1);
    assert_eq!(report.partitions_dropped, 1);
    assert!(relation_exists(&db.pool, &partition_name(missing_day)).await);
    assert!(!relation_exists(&db.pool, &partition_name(old_day)).await);
    assert_eq!(
        common::count(&db.pool, "SELECT count(*) FROM job_history").await,
        2
    );
}

#[tokio::test]
async fn a_partition_created_late_takes_over_its_rows_from_the_default_partition() {
    let db = TestDb::new().await;
    let day = Utc::now().date_naive() + chrono::Days::new(20);
    sqlx::query(
        "INSERT INTO job_history (id, kind, priority, state, payload, attempts, max_attempts, created_at, finished_at)
         VALUES (gen_random_uuid(), 'test', 1, 'completed', '{}', 1, 5, now(), $1::date + time '12:00')",
    )
    .bind(day)
    .execute(&db.pool)
    .await
    .unwrap();
    let config = MaintenanceConfig {
        partitions_ahead_days: 20,
        ..Default::default()
    };
    let report = housekeeping(&db.pool, &config, Utc::now()).await.unwrap();
    assert!(report.partitions_created >= 1);
    assert_eq!(
        common::count(&db.pool, "SELECT count(*) FROM job_history_default").await,
        0
    );
    assert_eq!(
        common::count(
            &db.pool,
            &format!("SELECT count(*) FROM {}", partition_name(day))
        )
        .await,
        1
    );
}

// ---------------------------------------------------------------------------
// Idle conversations.

async fn lane(pool: &PgPool, conversation: ConversationId) -> Option<(i64, i32)> {
    sqlx::query_as("SELECT last_seq, live_jobs FROM conversation_queues WHERE conversation_id = $1")
        .bind(conversation)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Enqueues, claims and completes one job of `conversation`.
async fn run_one(pool: &PgPool, conversation: ConversationId) {
    let id = enqueue(
        pool,
        NewJob::new("test", json!({})).with_conversation(conversation),
    )
    .await;
    let claimed = queue::claim(pool, "w", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, id);
    finish_one(pool, &claimed.lease("w"), &done(), &Backoff::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn idle_conversations_lose_their_row_but_never_under_an_enqueue() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (idle, live, busy) = (
        ConversationId::new(),
        ConversationId::new(),
        ConversationId::new(),
    );
    run_one(pool, idle).await;
    run_one(pool, busy).await;
    enqueue(pool, NewJob::new("test", json!({})).with_conversation(live)).await;
    assert_eq!(lane(pool, idle).await, Some((1, 0)));

    // Idle for an hour: nothing is, every finish was just now.
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        prune_idle_conversations(pool, hour_ago, 100).await.unwrap(),
        0
    );

    // An enqueue of `busy` is in flight (its transaction holds the row) when
    // the prune runs: the prune neither waits for it nor deletes the row.
    let mut tx = pool.begin().await.unwrap();
    queue::enqueue(
        &mut tx,
        &NewJob::new("test", json!({})).with_conversation(busy),
    )
    .await
    .unwrap();
    let soon = Utc::now() + chrono::Duration::seconds(5);
    let pruned = tokio::time::timeout(NO_HANG, prune_idle_conversations(pool, soon, 1))
        .await
        .expect("pruning passes over locked rows")
        .unwrap();
    assert_eq!(pruned, 1, "only the idle conversation goes");
    tx.commit().await.unwrap();
    assert_eq!(lane(pool, idle).await, None);
    assert_eq!(
        lane(pool, live).await,
        Some((1, 1)),
        "a live job keeps its row"
    );
    assert_eq!(lane(pool, busy).await, Some((2, 1)));
    // The enqueued job of `busy` runs (it is not blocked), and the next one
    // waits behind it as usual.
    let next = enqueue(pool, NewJob::new("test", json!({})).with_conversation(busy)).await;
    let claimed = queue::claim(pool, "w", 10, LEASE, &kinds()).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(claimed.len(), 2, "live's job and busy's first job: {ids:?}");
    assert!(!ids.contains(&next));

    // A pruned conversation starts over: its next job is unblocked, the one
    // after it waits for it.
    let first = enqueue(pool, NewJob::new("test", json!({})).with_conversation(idle)).await;
    let second = enqueue(pool, NewJob::new("test", json!({})).with_conversation(idle)).await;
    assert_eq!(lane(pool, idle).await, Some((2, 2)));
    let claimed = queue::claim(pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, first);
    assert!(queue::claim(pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap()
        .is_empty());
    finish_one(pool, &claimed.lease("w"), &done(), &Backoff::default())
        .await
        .unwrap();
    let claimed = queue::claim(pool, "w", 10, LEASE, &kinds()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, second);
}

#[tokio::test]
async fn pruning_in_a_loop_against_concurrent_enqueues_keeps_every_conversation_in_order() {
    let db = TestDb::new().await;
    let conversations: Vec<ConversationId> = (0..6).map(|_| ConversationId::new()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let pruner = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pruned = 0;
            while !stop.is_cancelled() {
                // Everything finished is idle.
                let since = Utc::now() + chrono::Duration::hours(1);
                pruned += prune_idle_conversations(&pool, since, 2).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            pruned
        })
    };
    // Each conversation: rounds of two jobs enqueued together, run in order
    // by a worker of its own, after which the conversation is idle again.
    let mut tasks = Vec::new();
    for (i, &conversation) in conversations.iter().enumerate() {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{i}");
            for round in 0..25 {
                let mut conn = pool.acquire().await.unwrap();
                let jobs: Vec<NewJob> = (0..2)
                    .map(|k| {
                        NewJob::new(format!("c{i}"), json!({ "round": round, "k": k }))
                            .with_conversation(conversation)
                    })
                    .collect();
                let ids: Vec<JobId> = queue::enqueue_many(&mut conn, &jobs)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                drop(conn);
                for &expected in &ids {
                    let claimed = queue::claim(&pool, &owner, 10, LEASE, &[format!("c{i}")])
                        .await
                        .unwrap();
                    assert_eq!(claimed.len(), 1, "one job of the conversation at a time");
                    assert_eq!(claimed[0].id, expected, "in enqueue order");
                    finish_one(
                        &pool,
                        &claimed[0].lease(&owner),
                        &done(),
                        &Backoff::default(),
                    )
                    .await
                    .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.cancel();
    let pruned = pruner.await.unwrap();
    assert!(pruned > 0, "the pruner deleted rows meanwhile");
    assert_eq!(
        common::count(&db.pool, "SELECT count(*) FROM jobs").await,
        0
    );
    assert_eq!(
        common::count(
            &db.pool,
            "SELECT count(*) FROM conversation_queues WHERE live_jobs <> 0"
        )
        .await,
        0
    );
    assert_eq!(
        common::count(&db.pool, "SELECT count(*) FROM job_history").await,
        6 * 25 * 2
    );
}

// ---------------------------------------------------------------------------
// The vacuum lock.

const VACUUM_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('skipjack.jobs.vacuum'))";

/// Whether another session can take the vacuum lock now (it lets go at once).
async fn vacuum_lock_free(url: &str) -> bool {
    let mut other = PgConnection::connect(url).await.unwrap();
    let free: bool = sqlx::query_scalar(VACUUM_LOCK)
        .fetch_one(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    free
}

/// Blocks VACUUM of `jobs` (it needs SHARE UPDATE EXCLUSIVE) until dropped
/// or committed.
async fn block_vacuum(url: &str) -> PgConnection {
    let mut blocker = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE jobs IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    blocker
}

async fn vacuum_waiting(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                        WHERE relation = 'jobs'::regclass AND NOT granted
                          AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cancelled_vacuum_pass_leaves_the_lock_free_for_other_processes() {
    let db = TestDb::with_pool_size(4).await;
    let mut blocker = block_vacuum(&db.url).await;
    // threshold -1: always due.
    let pass = {
        let pool = db.pool.clone();
        tokio::spawn(async move { vacuum_if_needed(&pool, -1).await })
    };
    common::eventually(NO_HANG, "the vacuum waits", || vacuum_waiting(&db.pool)).await;
    assert!(!vacuum_lock_free(&db.url).await, "held while vacuuming");
    // Cancelled mid-vacuum, as at shutdown.
    pass.abort();
    assert!(pass.await.unwrap_err().is_cancelled());
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    common::eventually(NO_HANG, "the vacuum lock is free again", || {
        vacuum_lock_free(&db.url)
    })
    .await;
    // The pool is still usable, and a later pass vacuums.
    assert!(vacuum_if_needed(&db.pool, -1).await.unwrap());
    assert!(vacuum_lock_free(&db.url).await);
}

#[tokio::test]
async fn a_failed_vacuum_pass_leaves_the_lock_free_for_other_processes() {
    let db = TestDb::new().await;
    // A pool whose statements time out: VACUUM behind the blocker fails.
    let options = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .options([("statement_timeout", "200")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let blocker = block_vacuum(&db.url).await;
    let error = vacuum_if_needed(&pool, -1).await.unwrap_err();
    assert!(error.to_string().contains("statement timeout"), "{error}");
    common::eventually(NO_HANG, "the vacuum lock is free again", || {
        vacuum_lock_free(&db.url)
    })
    .await;
    blocker.close().await.unwrap();
    assert!(vacuum_if_needed(&pool, -1).await.unwrap());
}

// ---------------------------------------------------------------------------
// `skipjack prune`.

/// A finished job in `job_history`, finished at `finished_at`; its id.
async fn finished_job(pool: &PgPool, finished_at: chrono::DateTime<Utc>) -> uuid::Uuid {
    sqlx::query_scalar(
        "INSERT INTO job_history (id, kind, priority, state, payload, attempts, max_attempts, created_at, finished_at)
         VALUES (gen_random_uuid(), 'test', 1, 'completed', '{}', 1, 5, $1, $1)
         RETURNING id",
    )
    .bind(finished_at)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn ids(pool: &PgPool, sql: &str) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
    ids.sort();
    ids
}

fn sorted<const N: usize>(mut ids: [uuid::Uuid; N]) -> Vec<uuid::Uuid> {
    ids.sort();
    ids.to_vec()
}

#[tokio::test]
async fn skipjack_prune_removes_what_the_retention_let_go_and_keeps_the_rest() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    let days_ago = |d: i64| now - chrono::Duration::days(d);
    let old_day = (now - chrono::Duration::days(10)).date_naive();

    // History: a day partition past the retention (7 days below), rows of
    // the default partition on either side of it.
    sqlx::query("SELECT skipjack_create_history_partition($1)")
        .bind(old_day)
        .execute(pool)
        .await
        .unwrap();
    let in_old_partition = finished_job(pool, days_ago(10)).await;
    finished_job(pool, days_ago(9)).await;
    let recent_in_default = finished_job(pool, days_ago(3)).await;
    let recent_with_old_key = finished_job(pool, days_ago(2)).await;
    assert_eq!(
        common::count(
            pool,
            &format!("SELECT count(*) FROM {}", partition_name(old_day))
        )
        .await,
        1
    );

    // Idempotency keys: an old one whose job goes, an old one whose job
    // stays, a recent one.
    for (key, job, age) in [
        ("old-job-gone", in_old_partition, 10),
        ("old-job-kept", recent_with_old_key, 10),
        ("recent", uuid::Uuid::now_v7(), 1),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, job_id, created_at)
             VALUES ('00000000-0000-0000-0000-000000000000', $1, $2, $3)",
        )
        .bind(key)
        .bind(job)
        .bind(days_ago(age))
        .execute(pool)
        .await
        .unwrap();
    }
    // Events: one past the retention, one within it.
    for (job, age) in [(in_old_partition, 10), (recent_in_default, 1)] {
        sqlx::query(
            "INSERT INTO job_events (job_id, event, attempt, created_at)
             VALUES ($1, 'retried', 1, $2)",
        )
        .bind(job)
        .bind(days_ago(age))
        .execute(pool)
        .await
        .unwrap();
    }
    // Waiters: one not seen for ten minutes (its process died), one fresh.
    sqlx::query(
        "INSERT INTO queue_waiters (channel, waiter, seen_at)
         VALUES ('skipjack_jobs', 'gone', now() - interval '10 minutes'),
                ('skipjack_jobs', 'alive', now())",
    )
    .execute(pool)
    .await
    .unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["prune", "--retention-days", "7"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env_remove("SKIPJACK_RETENTION_DAYS")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The expired partition is dropped, the expired default rows deleted,
    // the rest kept; the partitions ahead exist.
    assert!(!relation_exists(pool, &partition_name(old_day)).await);
    assert_eq!(
        ids(pool, "SELECT id FROM job_history").await,
        sorted([recent_in_default, recent_with_old_key])
    );
    let ahead = (now + chrono::Duration::days(7)).date_naive();
    assert!(relation_exists(pool, &partition_name(ahead)).await);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(keys, ["old-job-kept", "recent"]);
    assert_eq!(
        ids(pool, "SELECT job_id FROM job_events").await,
        vec![recent_in_default]
    );
    let waiters: Vec<String> = sqlx::query_scalar("SELECT waiter FROM queue_waiters")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(waiters, ["alive"]);
}
