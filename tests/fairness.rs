//! Fair scheduling against a real Postgres: tenants take turns within a
//! priority (weighted), a tenant's cap on running jobs holds under
//! concurrent claimers, aging lifts a starved priority, and the counts the
//! triggers keep stay exact on every path (docs/scheduling.md).

mod common;

use common::{count, TestDb};
use serde_json::json;
use skipjack::ids::{JobId, TenantId};
use skipjack::queue::{
    self, finish::finish_one, maintenance, Backoff, ClaimedJob, NewJob, Outcome, Priority,
};
use skipjack::tenants::{self, SchedulingChange};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);

fn kinds() -> Vec<String> {
    vec!["test".to_owned()]
}

async fn tenant(pool: &PgPool, name: &str) -> TenantId {
    tenants::create_tenant(pool, name, None).await.unwrap()
}

/// A tenant's own cap of `max_running` running jobs.
fn cap(max_running: i32) -> SchedulingChange {
    SchedulingChange {
        max_running: Some(max_running),
        ..Default::default()
    }
}

/// No cap of the tenant's own: the default applies, if any.
fn own_cap_dropped() -> SchedulingChange {
    SchedulingChange {
        default_max_running: true,
        ..Default::default()
    }
}

fn job(tenant: Option<TenantId>, priority: i64) -> NewJob {
    let mut job = NewJob::new("test", json!({}));
    job.tenant_id = tenant;
    job.priority = Priority::new(priority).unwrap();
    job
}

async fn enqueue(pool: &PgPool, tenant: Option<TenantId>, priority: i64, n: usize) -> Vec<JobId> {
    let jobs: Vec<NewJob> = (0..n).map(|_| job(tenant, priority)).collect();
    let mut conn = pool.acquire().await.unwrap();
    let mut ids = Vec::new();
    for chunk in jobs.chunks(2000) {
        ids.extend(
            queue::enqueue_many(&mut conn, chunk)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id),
        );
    }
    ids
}

async fn claim(pool: &PgPool, owner: &str, n: usize) -> Vec<ClaimedJob> {
    queue::claim(pool, owner, n, LEASE, &kinds()).await.unwrap()
}

async fn complete(pool: &PgPool, owner: &str, job: &ClaimedJob) {
    let done = Outcome::Completed {
        result: json!({}),
        usage: None,
    };
    finish_one(pool, &job.lease(owner), &done, &Backoff::default())
        .await
        .unwrap();
}

/// Completes a claim's jobs in one batch, as a worker's completer does.
async fn complete_all(pool: &PgPool, owner: &str, jobs: &[ClaimedJob]) {
    let done = Outcome::Completed {
        result: json!({}),
        usage: None,
    };
    let items: Vec<queue::FinishItem> = jobs
        .iter()
        .map(|job| queue::FinishItem {
            job: job.id,
            attempt: job.attempt,
            outcome: &done,
        })
        .collect();
    let states = queue::finish(pool, owner, &items, &Backoff::default())
        .await
        .unwrap();
    assert!(states.iter().all(Option::is_some));
}

fn by_tenant(jobs: &[ClaimedJob]) -> HashMap<Option<TenantId>, usize> {
    let mut counts = HashMap::new();
    for job in jobs {
        *counts.entry(job.tenant_id).or_default() += 1;
    }
    counts
}

/// What the triggers keep must match what `jobs` holds: every tenant queue
/// with a queued job is active (claims visit it), and the running count of
/// each tenant with a cap is exact (0 for one without).
async fn assert_counts_exact(pool: &PgPool) {
    let inactive_with_jobs = count(
        pool,
        "SELECT count(*) FROM (SELECT DISTINCT
                    coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) AS k, priority
                FROM jobs WHERE state = 'queued') j
         LEFT JOIN fair_queues f ON f.tenant_key = j.k AND f.priority = j.priority
         WHERE f.active IS NOT TRUE",
    )
    .await;
    assert_eq!(inactive_with_jobs, 0, "a queue holding jobs is not active");
    let running_off = count(
        pool,
        "SELECT count(*) FROM tenants t
         LEFT JOIN (SELECT tenant_id, count(*) AS n FROM jobs
                    WHERE state = 'processing' GROUP BY 1) j ON j.tenant_id = t.id
         WHERE t.running <> CASE WHEN fair_cap(t.max_running) IS NULL THEN 0
                                 ELSE coalesce(j.n, 0) END",
    )
    .await;
    assert_eq!(running_off, 0, "tenants.running differs from jobs");
}

#[tokio::test]
async fn a_tenants_backlog_does_not_delay_another_tenants_jobs() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    enqueue(&db.pool, Some(a), 1, 5_000).await;
    // A drains in claims of 100; B submits a job between claims, now and
    // then. Each of B's jobs is in the first claim after it arrived.
    let mut a_claimed = 0;
    for round in 0..30 {
        let b_job = if round % 3 == 0 {
            Some(enqueue(&db.pool, Some(b), 1, 1).await[0])
        } else {
            None
        };
        let claimed = claim(&db.pool, "w", 100).await;
        assert_eq!(claimed.len(), 100, "a full claim while A has a backlog");
        if let Some(b_job) = b_job {
            assert!(
                claimed.iter().any(|j| j.id == b_job),
                "round {round}: B's job waited behind A's backlog"
            );
        }
        a_claimed += claimed.iter().filter(|j| j.tenant_id == Some(a)).count();
        complete_all(&db.pool, "w", &claimed).await;
    }
    assert_eq!(a_claimed, 30 * 100 - 10);
    assert_counts_exact(&db.pool).await;
}

#[tokio::test]
async fn backlogged_tenants_share_the_workers_by_weight() {
    let db = TestDb::new().await;
    let heavy = tenant(&db.pool, "heavy").await;
    let light = tenant(&db.pool, "light").await;
    let change = SchedulingChange {
        weight: Some(3),
        ..Default::default()
    };
    tenants::set_scheduling(&db.pool, heavy, change)
        .await
        .unwrap();
    enqueue(&db.pool, Some(heavy), 5, 2_000).await;
    enqueue(&db.pool, Some(light), 5, 2_000).await;
    let mut claimed = Vec::new();
    for _ in 0..80 {
        claimed.extend(claim(&db.pool, "w", 10).await);
    }
    let counts = by_tenant(&claimed);
    let (h, l) = (counts[&Some(heavy)], counts[&Some(light)]);
    assert_eq!(h + l, 800);
    // Weight 3 against 1: 600 and 200, give or take one claim.
    assert!((590..=610).contains(&h), "heavy got {h}, light {l}");
    assert_counts_exact(&db.pool).await;
}

#[tokio::test]
async fn priority_still_comes_first_between_tenants() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    enqueue(&db.pool, Some(a), 1, 50).await;
    let urgent = enqueue(&db.pool, Some(b), 9, 5).await;
    let claimed = claim(&db.pool, "w", 5).await;
    let mut ids: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    ids.sort();
    let mut urgent = urgent;
    urgent.sort();
    assert_eq!(ids, urgent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_cap_on_running_jobs_holds_under_concurrent_claimers() {
    let db = TestDb::with_pool_size(20).await;
    let capped = tenant(&db.pool, "capped").await;
    let other = tenant(&db.pool, "other").await;
    let change = SchedulingChange {
        max_running: Some(7),
        ..Default::default()
    };
    tenants::set_scheduling(&db.pool, capped, change)
        .await
        .unwrap();
    enqueue(&db.pool, Some(capped), 5, 500).await;
    enqueue(&db.pool, Some(other), 1, 300).await;

    // Eight claimers at once, each claiming until nothing comes back, and
    // finishing some of the capped tenant's jobs as they go.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut mine = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let got = claim(&pool, &owner, 5).await;
                if got.is_empty() {
                    empty += 1;
                }
                let running = count(
                    &pool,
                    &format!(
                        "SELECT count(*) FROM jobs WHERE state = 'processing' AND tenant_id = '{capped}'"
                    ),
                )
                .await;
                assert!(running <= 7, "{running} of the capped tenant's jobs running");
                for job in got {
                    if job.tenant_id == Some(capped) && mine.len() % 2 == 0 {
                        complete(&pool, &owner, &job).await;
                    }
                    mine.push(job);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let counts = by_tenant(&all);
    // The other tenant's jobs were all claimed: the capped one's backlog
    // at the higher priority did not block them.
    assert_eq!(counts[&Some(other)], 300);
    assert_eq!(
        count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM jobs WHERE state = 'processing' AND tenant_id = '{capped}'"
            )
        )
        .await,
        7
    );
    assert_counts_exact(&db.pool).await;
}

#[tokio::test]
async fn the_default_cap_applies_to_tenants_without_their_own() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    tenants::set_scheduling_defaults(&db.pool, None, Some(3), false)
        .await
        .unwrap();
    enqueue(&db.pool, Some(a), 1, 20).await;
    assert_eq!(claim(&db.pool, "w", 10).await.len(), 3);
    assert!(claim(&db.pool, "w", 10).await.is_empty());
    // Jobs without a tenant have no cap.
    enqueue(&db.pool, None, 1, 20).await;
    assert_eq!(claim(&db.pool, "w", 10).await.len(), 10);
    // Its own cap wins over the default.
    let change = SchedulingChange {
        max_running: Some(5),
        ..Default::default()
    };
    tenants::set_scheduling(&db.pool, a, change).await.unwrap();
    let more = claim(&db.pool, "w", 20).await;
    assert_eq!(by_tenant(&more).get(&Some(a)), Some(&2));
}

async fn tenant_row_version(pool: &PgPool, tenant: TenantId) -> String {
    sqlx::query_scalar("SELECT xmin::text FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_and_finishes_of_an_uncapped_tenant_write_no_tenant_row() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    enqueue(&db.pool, Some(a), 1, 20).await;
    let before = tenant_row_version(&db.pool, a).await;
    let claimed = claim(&db.pool, "w", 20).await;
    assert_eq!(claimed.len(), 20);
    complete_all(&db.pool, "w", &claimed[..10]).await;
    for job in &claimed[10..] {
        complete(&db.pool, "w", job).await;
    }
    assert_eq!(tenant_row_version(&db.pool, a).await, before);
    assert_counts_exact(&db.pool).await;
}

/// One session on `db` that counts the calls of PL/pgSQL functions.
async fn tracked_pool(db: &TestDb) -> PgPool {
    sqlx::query(&format!(
        "ALTER DATABASE {} SET track_functions = 'pl'",
        db.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    db.new_pool(1).await
}

/// Calls of `fair_apply` counted so far, with those of `tracked`'s one
/// session (opened with `track_functions = 'pl'`) flushed first.
async fn fair_apply_calls(db: &TestDb, tracked: &PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(tracked)
        .await
        .unwrap();
    count(
        &db.pool,
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions \
         WHERE funcname = 'fair_apply'",
    )
    .await
}

/// Finishing the jobs of a tenant without a cap leaves the fair-scheduling
/// bookkeeping out entirely; a capped tenant's finishes still count down.
#[tokio::test]
async fn finishes_of_an_uncapped_tenant_run_no_fair_bookkeeping() {
    let db = TestDb::new().await;
    let tracked = tracked_pool(&db).await;
    let a = tenant(&tracked, "a").await;
    let b = tenant(&tracked, "b").await;
    tenants::set_scheduling(&tracked, b, cap(100))
        .await
        .unwrap();
    enqueue(&tracked, Some(a), 1, 5).await;
    let uncapped = claim(&tracked, "w", 5).await;
    enqueue(&tracked, Some(b), 1, 5).await;
    let capped = claim(&tracked, "w", 5).await;
    assert_eq!(by_tenant(&uncapped).get(&Some(a)), Some(&5));
    assert_eq!(by_tenant(&capped).get(&Some(b)), Some(&5));

    let before = fair_apply_calls(&db, &tracked).await;
    assert!(before > 0, "the claims were counted: {before}");
    for job in &uncapped {
        complete(&tracked, "w", job).await;
    }
    assert_eq!(fair_apply_calls(&db, &tracked).await, before);
    for job in &capped {
        complete(&tracked, "w", job).await;
    }
    assert_eq!(fair_apply_calls(&db, &tracked).await, before + 5);
    assert_counts_exact(&db.pool).await;
}

/// An enqueue into a queue that is active already leaves the bookkeeping
/// out; one that fills an inactive queue activates it.
#[tokio::test]
async fn enqueues_into_an_active_queue_run_no_fair_bookkeeping() {
    let db = TestDb::new().await;
    let tracked = tracked_pool(&db).await;
    let a = tenant(&tracked, "a").await;
    enqueue(&tracked, Some(a), 1, 2).await;
    let first = fair_apply_calls(&db, &tracked).await;
    assert!(first > 0, "the first enqueue activated the queue");
    enqueue(&tracked, Some(a), 1, 3).await;
    enqueue(&tracked, Some(a), 1, 1).await;
    assert_eq!(fair_apply_calls(&db, &tracked).await, first);
    // Another priority: another queue, activated.
    enqueue(&tracked, Some(a), 2, 1).await;
    assert_eq!(fair_apply_calls(&db, &tracked).await, first + 1);
    assert_eq!(
        count(&tracked, "SELECT count(*) FROM fair_queues WHERE active").await,
        2
    );
    assert_eq!(claim(&tracked, "w", 10).await.len(), 7);
    assert_counts_exact(&db.pool).await;
}

/// The count of running jobs a cap reads, when the cap is set while the
/// tenant's jobs run, dropped, and set again through the default.
#[tokio::test]
async fn a_cap_set_while_jobs_run_counts_them() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    enqueue(&db.pool, Some(a), 1, 30).await;
    let running = claim(&db.pool, "w", 10).await;
    let settings = tenants::set_scheduling(&db.pool, a, cap(12)).await.unwrap();
    assert_eq!(settings.running, 10);
    assert_counts_exact(&db.pool).await;
    assert_eq!(claim(&db.pool, "w", 10).await.len(), 2);
    complete_all(&db.pool, "w", &running[..4]).await;
    assert_counts_exact(&db.pool).await;
    assert_eq!(claim(&db.pool, "w", 10).await.len(), 4);

    // No cap of its own, none by default: not counted, but still reported.
    let uncapped = SchedulingChange {
        default_max_running: true,
        ..Default::default()
    };
    let settings = tenants::set_scheduling(&db.pool, a, uncapped)
        .await
        .unwrap();
    assert_eq!((settings.max_running, settings.running), (None, 12));
    assert_counts_exact(&db.pool).await;
    complete_all(&db.pool, "w", &running[4..]).await;
    assert_eq!(claim(&db.pool, "w", 3).await.len(), 3);

    // The default cap applies: counted afresh, then capped.
    tenants::set_scheduling_defaults(&db.pool, None, Some(10), false)
        .await
        .unwrap();
    assert_counts_exact(&db.pool).await;
    assert_eq!(
        count(&db.pool, "SELECT running::bigint FROM tenants").await,
        count(
            &db.pool,
            "SELECT count(*) FROM jobs WHERE state = 'processing'"
        )
        .await
    );
    assert_eq!(claim(&db.pool, "w", 10).await.len(), 1);
    tenants::set_scheduling_defaults(&db.pool, None, None, true)
        .await
        .unwrap();
    assert_counts_exact(&db.pool).await;
}

/// A cap change waits for every transaction that moved a job: behind one
/// left open it gives up (lock timeout) instead of holding every enqueue
/// back, and changes nothing.
#[tokio::test]
async fn a_cap_change_behind_an_open_transaction_gives_up_and_changes_nothing() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let mut open = db.pool.begin().await.unwrap();
    queue::enqueue(&mut open, &job(Some(a), 1)).await.unwrap();
    let err = tenants::set_scheduling(&db.pool, a, cap(3))
        .await
        .unwrap_err();
    let code = match &err {
        tenants::TenantError::Database(e) => e
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("55P03"), "{err}");
    open.commit().await.unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM tenants WHERE max_running IS NOT NULL"
        )
        .await,
        0
    );
    // Once the transaction has ended, the change goes through.
    tenants::set_scheduling(&db.pool, a, cap(3)).await.unwrap();
    assert_counts_exact(&db.pool).await;
}

/// Caps come and go while claimers and finishers move the tenant's jobs:
/// whenever a cap applies, its count is exact, and no claim goes past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_set_and_dropped_under_load_keep_the_count_exact() {
    let db = TestDb::with_pool_size(20).await;
    let a = tenant(&db.pool, "a").await;
    enqueue(&db.pool, Some(a), 1, 10_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let pool = db.pool.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut held: Vec<ClaimedJob> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.extend(claim(&pool, &owner, 4).await);
                // Finish about half, one by one and in a batch, so that
                // running jobs pile up across the cap changes.
                if held.len() >= 6 {
                    let rest = held.split_off(3);
                    complete(&pool, &owner, &held[0]).await;
                    complete_all(&pool, &owner, &held[1..]).await;
                    held = rest;
                }
            }
            held
        }));
    }
    for round in 0..12 {
        match round % 4 {
            0 => {
                tenants::set_scheduling(&db.pool, a, cap(2_000))
                    .await
                    .unwrap();
            }
            1 => {
                tenants::set_scheduling(&db.pool, a, own_cap_dropped())
                    .await
                    .unwrap();
            }
            2 => {
                tenants::set_scheduling_defaults(&db.pool, None, Some(2_000), false)
                    .await
                    .unwrap();
            }
            _ => {
                tenants::set_scheduling_defaults(&db.pool, None, None, true)
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tenants::set_scheduling(&db.pool, a, cap(2_000))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let mut held = 0;
    for w in workers {
        held += w.await.unwrap().len();
    }
    assert!(held > 0, "the claimers held no job at the end");
    assert_counts_exact(&db.pool).await;
    // And the cap binds on that count: room for exactly what is left.
    let limit = held + 3;
    tenants::set_scheduling(&db.pool, a, cap(limit as i32))
        .await
        .unwrap();
    assert_eq!(claim(&db.pool, "x", 10).await.len(), 3);
}

/// Moves the aging clock of every queue back by `seconds`, as if they had
/// waited that much longer.
async fn wait_longer(pool: &PgPool, seconds: f64) {
    sqlx::query("UPDATE fair_queues SET waiting_since = waiting_since - make_interval(secs => $1)")
        .bind(seconds)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn aging_lifts_a_low_priority_queue_under_a_constant_high_priority_load() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    // A long aging interval, so that the test's own running time (a few
    // seconds at most) cannot add a level.
    let aging = 1000.0;
    tenants::set_scheduling_defaults(&db.pool, Some(aging), None, false)
        .await
        .unwrap();
    enqueue(&db.pool, Some(a), 10, 5_000).await;
    let low = enqueue(&db.pool, Some(b), 1, 1).await[0];

    // Priority 1 against a constant priority-10 load: nine levels to climb.
    // After 8 levels' worth of waiting it is still behind.
    wait_longer(&db.pool, 8.5 * aging).await;
    maintenance::age_queues(&db.pool).await.unwrap();
    let claimed = claim(&db.pool, "w", 50).await;
    assert!(!claimed.iter().any(|j| j.id == low));
    assert_eq!(claimed.len(), 50);
    // The claim served the priority-10 queue, whose clock restarted; the
    // low one kept waiting. Another level and it is next.
    wait_longer(&db.pool, 1.0 * aging).await;
    // Undo the push on the busy queue: it has just been served.
    sqlx::query("UPDATE fair_queues SET waiting_since = now() WHERE priority = 10")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(maintenance::age_queues(&db.pool).await.unwrap(), 1);
    let claimed = claim(&db.pool, "w", 50).await;
    assert!(
        claimed.iter().any(|j| j.id == low),
        "the priority-1 job must start once it has waited 9 aging intervals"
    );
    // Served, it is back at its own priority.
    let eff: i16 = sqlx::query_scalar("SELECT eff_priority FROM fair_queues WHERE priority = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(eff, 1);
}

#[tokio::test]
async fn without_aging_the_low_priority_queue_waits() {
    // The control for the test above: the same load with no waiting time
    // never gives priority 1 a turn.
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    tenants::set_scheduling_defaults(&db.pool, Some(1000.0), None, false)
        .await
        .unwrap();
    enqueue(&db.pool, Some(a), 10, 1_000).await;
    let low = enqueue(&db.pool, Some(b), 1, 1).await[0];
    for _ in 0..10 {
        assert_eq!(maintenance::age_queues(&db.pool).await.unwrap(), 0);
        let claimed = claim(&db.pool, "w", 50).await;
        assert!(!claimed.iter().any(|j| j.id == low));
    }
}

#[tokio::test]
async fn the_counts_stay_exact_on_every_path() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    // A cap no path reaches, so that a's count is kept; b has none.
    tenants::set_scheduling(&db.pool, a, cap(1_000))
        .await
        .unwrap();
    enqueue(&db.pool, Some(a), 3, 40).await;
    enqueue(&db.pool, Some(b), 7, 40).await;
    enqueue(&db.pool, None, 5, 40).await;
    assert_counts_exact(&db.pool).await;

    let claimed = claim(&db.pool, "w", 60).await;
    assert_eq!(claimed.len(), 60);
    assert_counts_exact(&db.pool).await;

    // Complete, retry, fail for good: one finish batch.
    let outcomes: Vec<Outcome> = (0..30)
        .map(|i| match i % 3 {
            0 => Outcome::Completed {
                result: json!({}),
                usage: None,
            },
            1 => Outcome::Retry {
                error: "again".into(),
                retry_after: Some(Duration::from_secs(3600)),
            },
            _ => Outcome::Failed { error: "no".into() },
        })
        .collect();
    let items: Vec<queue::FinishItem> = claimed[..30]
        .iter()
        .zip(&outcomes)
        .map(|(job, outcome)| queue::FinishItem {
            job: job.id,
            attempt: job.attempt,
            outcome,
        })
        .collect();
    queue::finish(&db.pool, "w", &items, &Backoff::default())
        .await
        .unwrap();
    assert_counts_exact(&db.pool).await;

    // Release at shutdown, cancel a running and a queued job.
    let released: Vec<JobId> = claimed[30..35].iter().map(|j| j.id).collect();
    queue::release(&db.pool, "w", &released).await.unwrap();
    assert_counts_exact(&db.pool).await;
    queue::cancel(&db.pool, claimed[40].id, None, "test")
        .await
        .unwrap();
    let queued: JobId = sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'queued' LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    queue::cancel(&db.pool, queued, None, "test").await.unwrap();
    assert_counts_exact(&db.pool).await;

    // Rescue of expired leases.
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE state = 'processing'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    queue::rescue(&db.pool, 1000).await.unwrap();
    assert_counts_exact(&db.pool).await;

    // A manual retry of a failed job, then draining everything.
    let failed: JobId =
        sqlx::query_scalar("SELECT id FROM job_history WHERE state = 'failed' LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    queue::retry(&db.pool, failed, None).await.unwrap();
    assert_counts_exact(&db.pool).await;
    sqlx::query("UPDATE jobs SET run_at = now() WHERE state = 'queued'")
        .execute(&db.pool)
        .await
        .unwrap();
    loop {
        let claimed = claim(&db.pool, "w2", 50).await;
        if claimed.is_empty() {
            break;
        }
        complete_all(&db.pool, "w2", &claimed).await;
    }
    assert_counts_exact(&db.pool).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        count(&db.pool, "SELECT coalesce(sum(running), 0) FROM tenants").await,
        0
    );
}

#[tokio::test]
async fn the_sweep_clears_empty_queues_and_activates_one_holding_a_job() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    let b = tenant(&db.pool, "b").await;
    enqueue(&db.pool, Some(a), 1, 3).await;
    let claimed = claim(&db.pool, "w", 3).await;
    assert_eq!(claimed.len(), 3);
    complete_all(&db.pool, "w", &claimed).await;
    let b_job = enqueue(&db.pool, Some(b), 1, 1).await[0];
    // One queue is empty now, the other is not.
    assert_eq!(maintenance::sweep_queues(&db.pool).await.unwrap(), (0, 1));
    let active: Vec<TenantId> =
        sqlx::query_scalar("SELECT tenant_key FROM fair_queues WHERE active ORDER BY tenant_key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(active, vec![b]);
    // An enqueue that raced with a clear: its queue is inactive though it
    // holds a job, and claims do not see it until the sweep.
    sqlx::query("UPDATE fair_queues SET active = false")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(claim(&db.pool, "w", 10).await.is_empty());
    assert_eq!(maintenance::sweep_queues(&db.pool).await.unwrap(), (1, 0));
    let claimed = claim(&db.pool, "w", 10).await;
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![b_job]
    );
    assert_counts_exact(&db.pool).await;
}

#[tokio::test]
async fn enqueues_into_an_active_queue_do_not_write_its_row() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    enqueue(&db.pool, Some(a), 1, 1).await;
    // Ten single-row enqueues in one transaction: the queue is active, so
    // its row is read, never written.
    let mut tx = db.pool.begin().await.unwrap();
    for _ in 0..10 {
        queue::enqueue(&mut tx, &job(Some(a), 1)).await.unwrap();
    }
    let written: i64 = sqlx::query_scalar(
        "SELECT n_tup_upd + n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = 'fair_queues'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(written, 0, "an enqueue into an active queue wrote its row");
    assert_counts_exact(&db.pool).await;
}

#[tokio::test]
async fn scheduling_settings_refuse_nonsense() {
    let db = TestDb::new().await;
    let a = tenant(&db.pool, "a").await;
    for change in [
        SchedulingChange {
            weight: Some(0),
            ..Default::default()
        },
        SchedulingChange {
            weight: Some(101),
            ..Default::default()
        },
        SchedulingChange {
            max_running: Some(0),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            tenants::set_scheduling(&db.pool, a, change).await,
            Err(tenants::TenantError::Invalid(_))
        ));
    }
    assert!(
        tenants::set_scheduling_defaults(&db.pool, Some(0.0), None, false)
            .await
            .is_err()
    );
    let settings = tenants::set_scheduling(
        &db.pool,
        a,
        SchedulingChange {
            weight: Some(4),
            max_running: Some(9),
            default_max_running: false,
        },
    )
    .await
    .unwrap();
    assert_eq!((settings.weight, settings.max_running), (4, Some(9)));
}
