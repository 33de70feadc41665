//! The queue engine against a real Postgres: claims, priorities,
//! conversation order, leases and rescue, retries, idempotency, cancel.

mod common;

use common::{count, TestDb};
use serde_json::json;
use skipjack::ids::{ConversationId, JobId, TenantId};
use skipjack::queue::{
    self, finish::finish_one, AttemptId, Backoff, FinishItem, JobState, NewJob, Outcome, Priority,
    QueueError,
};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);

fn kinds() -> Vec<String> {
    vec!["test".to_owned()]
}

fn job(n: usize) -> NewJob {
    NewJob::new("test", json!({ "n": n }))
}

fn done() -> Outcome {
    Outcome::Completed {
        result: json!({"ok": true}),
        usage: None,
    }
}

async fn enqueue_all(pool: &PgPool, jobs: &[NewJob]) -> Vec<JobId> {
    let mut conn = pool.acquire().await.unwrap();
    let mut ids = Vec::new();
    for chunk in jobs.chunks(2000) {
        for e in queue::enqueue_many(&mut conn, chunk).await.unwrap() {
            assert!(e.inserted);
            ids.push(e.id);
        }
    }
    ids
}

async fn create_tenant(pool: &PgPool, name: &str) -> TenantId {
    let id = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await
        .unwrap();
    id
}

/// Makes every lease look expired, as if the clock had moved past them.
async fn expire_leases(pool: &PgPool) {
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE state = 'processing'",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_take_every_job_exactly_once() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..10_000).map(job).collect();
    let ids = enqueue_all(&db.pool, &jobs).await;

    let claimed: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let pool = db.pool.clone();
        let claimed = claimed.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("claimer-{w}");
            loop {
                let batch = queue::claim(&pool, &owner, 50, LEASE, &kinds())
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                let outcome = done();
                let items: Vec<FinishItem> = batch
                    .iter()
                    .map(|j| FinishItem {
                        job: j.id,
                        attempt: j.attempt,
                        outcome: &outcome,
                    })
                    .collect();
                let states = queue::finish(&pool, &owner, &items, &Backoff::default())
                    .await
                    .unwrap();
                assert!(states.iter().all(|s| *s == Some(JobState::Completed)));
                claimed.lock().unwrap().extend(batch.iter().map(|j| j.id));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    let unique: HashSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 10_000, "a job was claimed twice or missed");
    assert_eq!(unique, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_history WHERE state = 'completed' AND attempts = 1"
        )
        .await,
        10_000
    );
}

#[tokio::test]
async fn claims_follow_priority_then_age() {
    let db = TestDb::new().await;
    let priorities = [1, 5, 3, 10, 1, 5, 3, 10, 7, 2];
    let jobs: Vec<NewJob> = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| job(i).with_priority(Priority::new(*p).unwrap()))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    // One at a time, so the age order is the enqueue order.
    let mut order = HashMap::new();
    for (i, j) in jobs.iter().enumerate() {
        order.insert(queue::enqueue(&mut conn, j).await.unwrap().id, i);
    }
    let mut seen = Vec::new();
    loop {
        let batch = queue::claim(&db.pool, "w", 1, LEASE, &kinds())
            .await
            .unwrap();
        let Some(j) = batch.into_iter().next() else {
            break;
        };
        seen.push((j.priority.get(), order[&j.id]));
    }
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen.len(), 10);
    assert_eq!(seen, expected);
    assert_eq!(seen[0].0, 10);
    assert_eq!(seen[9].0, 1);
}

#[test]
fn priority_is_validated() {
    assert!(Priority::new(0).is_err());
    assert!(Priority::new(11).is_err());
    assert_eq!(Priority::new(10).unwrap().get(), 10);
    assert!(serde_json::from_str::<Priority>("0").is_err());
    assert_eq!(serde_json::from_str::<Priority>("3").unwrap().get(), 3);
}

#[tokio::test]
async fn schema_rejects_out_of_range_priority() {
    let db = TestDb::new().await;
    let err =
        sqlx::query("INSERT INTO jobs (id, kind, priority) VALUES (gen_random_uuid(), 'x', 11)")
            .execute(&db.pool)
            .await
            .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("23514")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conversation_fifo_holds_under_16_concurrent_claimers() {
    let db = TestDb::new().await;
    const CONVERSATIONS: usize = 20;
    const TURNS: usize = 15;
    let conversations: Vec<ConversationId> =
        (0..CONVERSATIONS).map(|_| ConversationId::new()).collect();
    // Interleaved: turn k of every conversation, then turn k+1; in batches
    // of mixed conversations and in single enqueues.
    let mut conn = db.pool.acquire().await.unwrap();
    for turn in 0..TURNS {
        let batch: Vec<NewJob> = conversations
            .iter()
            .map(|c| NewJob::new("test", json!({ "turn": turn })).with_conversation(*c))
            .collect();
        if turn % 2 == 0 {
            queue::enqueue_many(&mut conn, &batch).await.unwrap();
        } else {
            for j in &batch {
                queue::enqueue(&mut conn, j).await.unwrap();
            }
        }
    }
    drop(conn);
    // Only each conversation's first turn is claimable at the start.
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM jobs WHERE NOT blocked").await,
        CONVERSATIONS as i64
    );

    let next_turn: Arc<Mutex<HashMap<ConversationId, usize>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let pool = db.pool.clone();
        let next_turn = next_turn.clone();
        let violations = violations.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("claimer-{w}");
            let mut idle = 0;
            while idle < 50 {
                let batch = queue::claim(&pool, &owner, 3, LEASE, &kinds())
                    .await
                    .unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for j in &batch {
                    let conversation = j.conversation_id.unwrap();
                    let turn = j.payload["turn"].as_u64().unwrap() as usize;
                    let mut next = next_turn.lock().unwrap();
                    let expected = next.entry(conversation).or_insert(0);
                    if *expected != turn {
                        violations.lock().unwrap().push(format!(
                            "{conversation}: got turn {turn}, expected {expected}"
                        ));
                    }
                    *expected = turn + 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let outcome = done();
                let items: Vec<FinishItem> = batch
                    .iter()
                    .map(|j| FinishItem {
                        job: j.id,
                        attempt: j.attempt,
                        outcome: &outcome,
                    })
                    .collect();
                queue::finish(&pool, &owner, &items, &Backoff::default())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_history WHERE state = 'completed'"
        )
        .await,
        (CONVERSATIONS * TURNS) as i64
    );
    // From the database's own clock: each turn started after the previous
    // turn of its conversation finished. A claim sees a job unblocked only
    // by a finish that committed before the claim's snapshot, and the claim
    // reads the clock after it (the statement's now() can be earlier still).
    let overlaps: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%s turn %s started %s, turn before finished %s', conversation_id, turn,
                       started_at, prev_finished)
         FROM (SELECT conversation_id, payload->>'turn' AS turn, started_at,
                      lag(finished_at) OVER (PARTITION BY conversation_id
                                             ORDER BY (payload->>'turn')::int) AS prev_finished
               FROM job_history) t
         WHERE started_at < prev_finished",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(overlaps.is_empty(), "{overlaps:?}");
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM conversation_queues WHERE live_jobs <> 0"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_turn_starts_after_the_previous_one_finished_even_when_claimed_in_an_older_transaction() {
    let db = TestDb::new().await;
    let conversation = ConversationId::new();
    let mut conn = db.pool.acquire().await.unwrap();
    for turn in 0..2 {
        let job = NewJob::new("test", json!({ "turn": turn })).with_conversation(conversation);
        queue::enqueue(&mut conn, &job).await.unwrap();
    }
    drop(conn);
    let first = queue::claim(&db.pool, "a", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    // A transaction that began before the first turn finished: its now()
    // is earlier than the finish, though its claim sees the finish.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    let outcome = done();
    let item = FinishItem {
        job: first.id,
        attempt: first.attempt,
        outcome: &outcome,
    };
    queue::finish(&db.pool, "a", &[item], &Backoff::default())
        .await
        .unwrap();
    let second = queue::claim(&mut *tx, "b", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    tx.commit().await.unwrap();
    assert_eq!(second.payload["turn"], 1);
    let first_finished: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT finished_at FROM job_history WHERE id = $1")
            .bind(first.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let second_started = second.started_at.expect("a claimed job has started");
    assert!(
        second_started >= first_finished,
        "turn 1 started at {second_started}, turn 0 finished at {first_finished}"
    );
}

#[tokio::test]
async fn different_conversations_run_in_parallel() {
    let db = TestDb::new().await;
    let (a, b) = (ConversationId::new(), ConversationId::new());
    let jobs = vec![
        job(0).with_conversation(a),
        job(1).with_conversation(a),
        job(2).with_conversation(b),
        job(3).with_conversation(b),
    ];
    enqueue_all(&db.pool, &jobs).await;
    let claimed = queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    let mut turns: Vec<u64> = claimed
        .iter()
        .map(|j| j.payload["n"].as_u64().unwrap())
        .collect();
    turns.sort();
    assert_eq!(turns, vec![0, 2], "one job per conversation, both at once");
}

#[tokio::test]
async fn expired_lease_is_rescued_and_the_late_completion_is_fenced_off() {
    let db = TestDb::new().await;
    let id = enqueue_all(&db.pool, &[job(1)]).await[0];
    let first = queue::claim(&db.pool, "worker-a", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.attempt, 1);

    // worker-a stalls; its lease runs out and the rescuer takes the job back.
    expire_leases(&db.pool).await;
    let report = queue::rescue(&db.pool, 100).await.unwrap();
    assert_eq!(report.requeued, vec![id]);
    assert!(report.failed.is_empty());
    // worker-a's heartbeat now reports the job as lost.
    let lost = queue::heartbeat(&db.pool, "worker-a", LEASE, &[first.attempt_id()])
        .await
        .unwrap();
    assert_eq!(lost, vec![first.attempt_id()]);

    let second = queue::claim(&db.pool, "worker-b", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((second.id, second.attempt), (id, 2));
    let b_outcome = Outcome::Completed {
        result: json!("from b"),
        usage: None,
    };
    let state = finish_one(
        &db.pool,
        &second.lease("worker-b"),
        &b_outcome,
        &Backoff::default(),
    )
    .await
    .unwrap();
    assert_eq!(state, JobState::Completed);

    // worker-a wakes up and tries to complete: rejected, nothing changes.
    let a_outcome = Outcome::Completed {
        result: json!("from a"),
        usage: None,
    };
    let err = finish_one(
        &db.pool,
        &first.lease("worker-a"),
        &a_outcome,
        &Backoff::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost(lost) if lost == id));
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.result, Some(json!("from b")));
    assert_eq!(view.worker.as_deref(), Some("worker-b"));
    assert_eq!(view.attempts, 2);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM job_history").await, 1);

    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "rescued");
    assert_eq!(events[0].worker.as_deref(), Some("worker-a"));

    // The same fence holds against a worker that retries or fails late.
    let retry = Outcome::Retry {
        error: "late".into(),
        retry_after: None,
    };
    assert!(matches!(
        finish_one(
            &db.pool,
            &first.lease("worker-a"),
            &retry,
            &Backoff::default()
        )
        .await,
        Err(QueueError::LeaseLost(_))
    ));
}

#[tokio::test]
async fn rescue_fails_a_job_that_used_its_last_attempt() {
    let db = TestDb::new().await;
    let conversation = ConversationId::new();
    let ids = enqueue_all(
        &db.pool,
        &[
            job(1).with_max_attempts(1).with_conversation(conversation),
            job(2).with_conversation(conversation),
        ],
    )
    .await;
    queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    expire_leases(&db.pool).await;
    let report = queue::rescue(&db.pool, 100).await.unwrap();
    assert_eq!(report.failed, vec![ids[0]]);
    let view = queue::get(&db.pool, ids[0], None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Failed);
    assert!(view.error.unwrap().contains("lease expired"));
    // The conversation moves on to its next job.
    let next = queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rescuers_rescue_each_job_once() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..500).map(job).collect();
    enqueue_all(&db.pool, &jobs).await;
    queue::claim(&db.pool, "dead", 500, LEASE, &kinds())
        .await
        .unwrap();
    expire_leases(&db.pool).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let r = queue::rescue(&pool, 20).await.unwrap();
                if r.requeued.is_empty() {
                    return mine;
                }
                mine.extend(r.requeued);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 500);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 500);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_events WHERE event = 'rescued'"
        )
        .await,
        500
    );
}

#[tokio::test]
async fn retries_back_off_and_end_in_failed_with_events() {
    let db = TestDb::new().await;
    let id = enqueue_all(&db.pool, &[job(1).with_max_attempts(3)]).await[0];
    let backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };
    for attempt in 1..=3 {
        let claimed = queue::claim(&db.pool, "w", 1, LEASE, &kinds())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt} should be claimable");
        assert_eq!(claimed[0].attempt, attempt);
        let outcome = Outcome::Retry {
            error: format!("upstream 503 #{attempt}"),
            retry_after: None,
        };
        let state = finish_one(&db.pool, &claimed[0].lease("w"), &outcome, &backoff)
            .await
            .unwrap();
        if attempt < 3 {
            assert_eq!(state, JobState::Queued);
            // Backed off: at least half of base * 2^(attempt-1) from now.
            let delay: f64 = sqlx::query_scalar(
                "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            let full = 10.0 * 2f64.powi(attempt - 1);
            assert!(
                delay >= full / 2.0 - 1.0 && delay <= full + 1.0,
                "delay {delay} for attempt {attempt}"
            );
            assert!(queue::claim(&db.pool, "w", 1, LEASE, &kinds())
                .await
                .unwrap()
                .is_empty());
            // Let the clock catch up with the backoff.
            sqlx::query("UPDATE jobs SET run_at = now()")
                .execute(&db.pool)
                .await
                .unwrap();
        } else {
            assert_eq!(state, JobState::Failed);
        }
    }
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Failed);
    assert_eq!(view.attempts, 3);
    assert_eq!(view.error.as_deref(), Some("upstream 503 #3"));
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["retried", "retried"]
    );
    assert_eq!(events[0].error.as_deref(), Some("upstream 503 #1"));
    assert!(events.iter().all(|e| e.next_run_at.unwrap() > e.created_at));
}

#[tokio::test]
async fn retry_after_is_honoured_and_permanent_failure_is_final() {
    let db = TestDb::new().await;
    let ids = enqueue_all(&db.pool, &[job(1), job(2)]).await;
    let claimed = queue::claim(&db.pool, "w", 2, LEASE, &kinds())
        .await
        .unwrap();
    let by_id: HashMap<JobId, _> = claimed.into_iter().map(|j| (j.id, j)).collect();
    let retry = Outcome::Retry {
        error: "429".into(),
        retry_after: Some(Duration::from_secs(42)),
    };
    let fail = Outcome::Failed {
        error: "400 bad request".into(),
    };
    let items = [
        FinishItem {
            job: ids[0],
            attempt: by_id[&ids[0]].attempt,
            outcome: &retry,
        },
        FinishItem {
            job: ids[1],
            attempt: by_id[&ids[1]].attempt,
            outcome: &fail,
        },
    ];
    let states = queue::finish(&db.pool, "w", &items, &Backoff::default())
        .await
        .unwrap();
    assert_eq!(states, vec![Some(JobState::Queued), Some(JobState::Failed)]);
    let delay: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        (41.0..=42.5).contains(&delay),
        "retry-after not honoured: {delay}"
    );
    let failed = queue::get(&db.pool, ids[1], None).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.attempts), (JobState::Failed, 1));
    assert_eq!(failed.error.as_deref(), Some("400 bad request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_submissions_yield_one_job() {
    let db = TestDb::new().await;
    let tenant = create_tenant(&db.pool, "acme").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let j = job(i).with_tenant(tenant).with_idempotency_key("order-42");
            queue::enqueue(&mut conn, &j).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ids: HashSet<JobId> = results.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 1, "every submission must name the same job");
    assert_eq!(results.iter().filter(|r| r.inserted).count(), 1);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 1);

    // Duplicates inside one batch, and another tenant's same key.
    let other = create_tenant(&db.pool, "globex").await;
    let mut conn = db.pool.acquire().await.unwrap();
    let batch = vec![
        job(100).with_tenant(tenant).with_idempotency_key("k2"),
        job(101).with_tenant(tenant).with_idempotency_key("k2"),
        job(102).with_tenant(other).with_idempotency_key("order-42"),
    ];
    let r = queue::enqueue_many(&mut conn, &batch).await.unwrap();
    assert!(r[0].inserted && !r[1].inserted && r[2].inserted);
    assert_eq!(r[0].id, r[1].id);
    assert!(!ids.contains(&r[2].id), "keys are per tenant");

    // Still the same job once it has finished and left the live table.
    let first = *ids.iter().next().unwrap();
    let claimed = queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    let target = claimed.iter().find(|j| j.id == first).unwrap();
    finish_one(&db.pool, &target.lease("w"), &done(), &Backoff::default())
        .await
        .unwrap();
    let again = queue::enqueue(
        &mut conn,
        &job(0).with_tenant(tenant).with_idempotency_key("order-42"),
    )
    .await
    .unwrap();
    assert_eq!((again.id, again.inserted), (first, false));
}

#[tokio::test]
async fn enqueue_joins_the_callers_transaction() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let id = queue::enqueue(&mut tx, &job(1)).await.unwrap().id;
    tx.rollback().await.unwrap();
    assert!(queue::get(&db.pool, id, None).await.unwrap().is_none());

    let mut tx = db.pool.begin().await.unwrap();
    let id = queue::enqueue(&mut tx, &job(2)).await.unwrap().id;
    assert!(
        queue::get(&db.pool, id, None).await.unwrap().is_none(),
        "invisible before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        queue::get(&db.pool, id, None).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time() {
    let db = TestDb::new().await;
    let id = enqueue_all(&db.pool, &[job(1).with_delay(Duration::from_secs(3600))]).await[0];
    assert!(queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap()
        .is_empty());
    sqlx::query("UPDATE jobs SET run_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let claimed = queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    assert_eq!(claimed[0].id, id);
}

#[tokio::test]
async fn a_job_reads_the_same_live_or_finished() {
    let db = TestDb::new().await;
    let tenant = create_tenant(&db.pool, "acme").await;
    let id = enqueue_all(&db.pool, &[job(1).with_tenant(tenant)]).await[0];
    let view = queue::get(&db.pool, id, Some(tenant))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Queued, 0));
    assert!(
        queue::get(&db.pool, id, Some(TenantId::new()))
            .await
            .unwrap()
            .is_none(),
        "other tenant"
    );

    let claimed = queue::claim(&db.pool, "w", 1, LEASE, &kinds())
        .await
        .unwrap()
        .remove(0);
    let view = queue::get(&db.pool, id, Some(tenant))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Processing, 1));
    assert!(view.started_at.is_some());

    let outcome = Outcome::Completed {
        result: json!({"answer": 42}),
        usage: Some(queue::TokenUsage {
            input_tokens: 12,
            output_tokens: 34,
        }),
    };
    finish_one(&db.pool, &claimed.lease("w"), &outcome, &Backoff::default())
        .await
        .unwrap();
    let view = queue::get(&db.pool, id, Some(tenant))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.result, Some(json!({"answer": 42})));
    assert_eq!(
        (view.input_tokens, view.output_tokens),
        (Some(12), Some(34))
    );
    assert!(view.finished_at.unwrap() >= view.started_at.unwrap());
    assert!(view.started_at.unwrap() >= view.created_at);
}

#[tokio::test]
async fn cancel_queued_and_processing_jobs_but_not_finished_ones() {
    let db = TestDb::new().await;
    let tenant = create_tenant(&db.pool, "acme").await;
    let conversation = ConversationId::new();
    let ids = enqueue_all(
        &db.pool,
        &[
            job(0).with_tenant(tenant).with_conversation(conversation),
            job(1).with_tenant(tenant).with_conversation(conversation),
            job(2).with_tenant(tenant).with_conversation(conversation),
            job(3).with_tenant(tenant),
        ],
    )
    .await;
    // Another tenant cannot cancel (nor tell the job exists).
    assert!(matches!(
        queue::cancel(&db.pool, ids[3], Some(TenantId::new()), "no").await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        queue::cancel(&db.pool, JobId::new(), Some(tenant), "no").await,
        Err(QueueError::NotFound(_))
    ));
    // Cancelling a blocked job leaves the head alone; cancelling the head
    // lets the next job run.
    queue::cancel(&db.pool, ids[1], Some(tenant), "user gave up")
        .await
        .unwrap();
    queue::cancel(&db.pool, ids[0], Some(tenant), "user gave up")
        .await
        .unwrap();
    let claimed = queue::claim(&db.pool, "w", 10, LEASE, &kinds())
        .await
        .unwrap();
    let claimed_ids: HashSet<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(claimed_ids, HashSet::from([ids[2], ids[3]]));
    // Processing: cancelled too, and its worker's late finish changes
    // nothing (fenced off: the row is gone).
    assert_eq!(
        queue::cancel(&db.pool, ids[2], Some(tenant), "stop")
            .await
            .unwrap(),
        JobState::Processing
    );
    let late = claimed.iter().find(|j| j.id == ids[2]).unwrap();
    assert!(matches!(
        finish_one(
            &db.pool,
            &late.lease("w"),
            &Outcome::Completed {
                result: json!("late"),
                usage: None
            },
            &Backoff::default()
        )
        .await,
        Err(QueueError::LeaseLost(_))
    ));
    let view = queue::get(&db.pool, ids[2], None).await.unwrap().unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Cancelled, 1));
    assert_eq!(view.worker.as_deref(), Some("w"));
    let view = queue::get(&db.pool, ids[0], None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Cancelled);
    assert_eq!(view.error.as_deref(), Some("user gave up"));
    assert_eq!(
        queue::events(&db.pool, ids[0]).await.unwrap()[0].event,
        "cancelled"
    );
    // Finished: not cancellable either.
    assert!(matches!(
        queue::cancel(&db.pool, ids[0], Some(tenant), "again").await,
        Err(QueueError::NotCancellable {
            state: JobState::Cancelled,
            ..
        })
    ));
}

#[tokio::test]
async fn heartbeat_extends_every_lease_in_one_statement() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..3).map(job).collect();
    enqueue_all(&db.pool, &jobs).await;
    let claimed = queue::claim(&db.pool, "w", 3, Duration::from_secs(1), &kinds())
        .await
        .unwrap();
    let ids: Vec<AttemptId> = claimed.iter().map(|j| j.attempt_id()).collect();
    let lost = queue::heartbeat(&db.pool, "w", Duration::from_secs(120), &ids)
        .await
        .unwrap();
    assert!(lost.is_empty());
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM jobs WHERE lease_expires_at > now() + interval '100 seconds'"
        )
        .await,
        3
    );
    // Another worker's heartbeat extends nothing of ours.
    let lost = queue::heartbeat(&db.pool, "intruder", Duration::from_secs(1), &ids)
        .await
        .unwrap();
    assert_eq!(lost.len(), 3);
    // Nor does our own heartbeat for an attempt we no longer run: the job's
    // current attempt is 1, so attempt 0 is reported lost and not extended.
    let stale: Vec<AttemptId> = ids
        .iter()
        .map(|a| AttemptId {
            job: a.job,
            attempt: a.attempt - 1,
        })
        .collect();
    sqlx::query("UPDATE jobs SET lease_expires_at = now() + interval '5 seconds'")
        .execute(&db.pool)
        .await
        .unwrap();
    let lost = queue::heartbeat(&db.pool, "w", Duration::from_secs(120), &stale)
        .await
        .unwrap();
    assert_eq!(lost, stale);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM jobs WHERE lease_expires_at > now() + interval '100 seconds'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn queue_stats_count_by_priority() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..6)
        .map(|i| job(i).with_priority(Priority::new(if i < 4 { 1 } else { 5 }).unwrap()))
        .collect();
    enqueue_all(&db.pool, &jobs).await;
    queue::claim(&db.pool, "w", 1, LEASE, &kinds())
        .await
        .unwrap();
    let stats = queue::stats(&db.pool).await.unwrap();
    assert_eq!(stats.depth.get(&1), Some(&4));
    assert_eq!(stats.depth.get(&5), Some(&1));
    assert_eq!(stats.total(), 5);
    assert_eq!(stats.processing, 1);
    assert!(stats.oldest_queued_age_seconds >= 0.0);
}

#[tokio::test]
async fn claim_is_index_driven_at_a_large_backlog() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO jobs (id, kind, priority, payload)
         SELECT gen_random_uuid(), 'test', 1 + (i % 10), '{}' FROM generate_series(1, 50000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let plan: Vec<(String,)> = sqlx::query_as(&format!(
        "EXPLAIN {}",
        include_str!("../sql/queue/claim.sql")
    ))
    .bind("w")
    .bind(100i64)
    .bind(60.0f64)
    .bind(kinds())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let plan: String = plan.into_iter().map(|(l,)| l + "\n").collect();
    assert!(
        plan.contains("using fair_queues_turn") && plan.contains("using jobs_fair_claim"),
        "claim must walk the tenant queues in turn order and each queue's index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on jobs"),
        "claim must not scan the table:\n{plan}"
    );
}

/// Collects the payloads NOTIFYed on `skipjack_jobs` up to a sentinel sent
/// afterwards: notifications arrive in commit order, so this is exactly what
/// the statements before the sentinel sent.
async fn notifications_until_sentinel(
    pool: &PgPool,
    listener: &mut sqlx::postgres::PgListener,
) -> Vec<String> {
    sqlx::query("SELECT pg_notify('skipjack_jobs', 'sentinel')")
        .execute(pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        if n.payload() == "sentinel" {
            return seen;
        }
        seen.push(n.payload().to_owned());
    }
}

#[tokio::test]
async fn enqueue_notifies_once_per_statement_and_only_when_a_worker_waits() {
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(queue::JOBS_CHANNEL).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();

    // Nobody waits: no NOTIFY at all, whatever the batch size.
    let batch: Vec<NewJob> = (0..50).map(job).collect();
    queue::enqueue_many(&mut conn, &batch).await.unwrap();
    queue::enqueue(&mut conn, &job(99)).await.unwrap();
    assert!(notifications_until_sentinel(&db.pool, &mut listener)
        .await
        .is_empty());

    // A worker waits: one NOTIFY per statement, carrying the count of
    // claimable jobs; delayed or blocked jobs do not count.
    queue::notify::register_waiter(&db.pool, queue::JOBS_CHANNEL, "idle-worker")
        .await
        .unwrap();
    queue::enqueue_many(&mut conn, &batch).await.unwrap();
    let conversation = ConversationId::new();
    let mixed = vec![
        job(1).with_conversation(conversation),
        job(2).with_conversation(conversation),
        job(3).with_delay(Duration::from_secs(600)),
    ];
    queue::enqueue_many(&mut conn, &mixed).await.unwrap();
    queue::enqueue(&mut conn, &job(4).with_delay(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(
        notifications_until_sentinel(&db.pool, &mut listener).await,
        vec!["50", "1"]
    );

    queue::notify::unregister_waiter(&db.pool, queue::JOBS_CHANNEL, "idle-worker")
        .await
        .unwrap();
    queue::enqueue(&mut conn, &job(5)).await.unwrap();
    assert!(notifications_until_sentinel(&db.pool, &mut listener)
        .await
        .is_empty());
}

#[tokio::test]
async fn retry_after_is_a_lower_bound_and_never_longer_than_the_retry_maximum() {
    let db = TestDb::new().await;
    let backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };
    // An upstream answering `Retry-After: 0` to everything does not burn the
    // attempts: each retry still waits at least the backoff's lower half.
    for attempt in 1..=5 {
        let floor = backoff.base * (1 << (attempt - 1)) / 2;
        let delay = backoff.retry_delay(attempt, Some(Duration::ZERO));
        assert!(
            delay >= floor.min(backoff.max / 2),
            "attempt {attempt}: {delay:?}"
        );
    }
    let asked = [
        Duration::ZERO,
        Duration::from_secs(86_400),
        // Absurd: would overflow the interval arithmetic unclamped.
        Duration::from_secs(u64::MAX),
        Duration::from_secs(60),
    ];
    let jobs: Vec<NewJob> = (0..asked.len()).map(job).collect();
    let ids = enqueue_all(&db.pool, &jobs).await;
    let claimed = queue::claim(&db.pool, "w", asked.len(), LEASE, &kinds())
        .await
        .unwrap();
    let by_id: HashMap<JobId, _> = claimed.into_iter().map(|j| (j.id, j)).collect();
    let outcomes: Vec<Outcome> = asked
        .iter()
        .map(|after| Outcome::Retry {
            error: "429".into(),
            retry_after: Some(*after),
        })
        .collect();
    let items: Vec<FinishItem> = ids
        .iter()
        .zip(&outcomes)
        .map(|(id, outcome)| FinishItem {
            job: *id,
            attempt: by_id[id].attempt,
            outcome,
        })
        .collect();
    let states = queue::finish(&db.pool, "w", &items, &backoff)
        .await
        .unwrap();
    assert!(states.iter().all(|s| *s == Some(JobState::Queued)));
    let mut delays = Vec::new();
    for id in &ids {
        let delay: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        delays.push(delay);
    }
    assert!(
        (4.0..=10.5).contains(&delays[0]),
        "Retry-After 0: {delays:?}"
    );
    assert!((299.0..=300.5).contains(&delays[1]), "a day: {delays:?}");
    assert!((299.0..=300.5).contains(&delays[2]), "absurd: {delays:?}");
    assert!((59.0..=60.5).contains(&delays[3]), "honoured: {delays:?}");
}

/// A read by id opens only the `job_history` partitions the job can be in
/// (its id's day, two before, and up to tomorrow), and still finds every
/// job: live, finished, finished long after it was created, and one with a
/// hand-made id of another UUID version.
#[tokio::test]
async fn a_read_by_id_opens_only_the_history_partitions_the_job_can_be_in() {
    let db = TestDb::new().await;
    // A month back and a week ahead, as with the default retention.
    sqlx::query("SELECT skipjack_ensure_history_partitions(current_date - 30, current_date + 7)")
        .execute(&db.pool)
        .await
        .unwrap();
    // Enqueues a job, runs it to completion; its id.
    let completed = |n: usize| {
        let pool = db.pool.clone();
        async move {
            let id = enqueue_all(&pool, &[job(n)]).await[0];
            let claimed = queue::claim(&pool, "w", 1, LEASE, &kinds()).await.unwrap();
            assert_eq!(claimed[0].id, id);
            finish_one(&pool, &claimed[0].lease("w"), &done(), &Backoff::default())
                .await
                .unwrap();
            id
        }
    };
    let finished = completed(1).await;
    // Finished three weeks after it was created (retried, say).
    let late = completed(3).await;
    // Its id says it was created three weeks ago.
    let three_weeks_ago = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (chrono::Utc::now() - chrono::Duration::days(21)).timestamp() as u64,
        0,
    ));
    sqlx::query("UPDATE job_history SET id = $2 WHERE id = $1")
        .bind(late)
        .bind(three_weeks_ago)
        .execute(&db.pool)
        .await
        .unwrap();
    let late = JobId(three_weeks_ago);
    let live = enqueue_all(&db.pool, &[job(2)]).await[0];
    // A version-4 id, finished 25 days ago.
    let hand_made: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO job_history (id, kind, priority, state, payload, attempts, max_attempts,
                                  created_at, finished_at)
         VALUES (gen_random_uuid(), 'test', 1, 'completed', '{}', 1, 5,
                 now() - interval '25 days', now() - interval '25 days')
         RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let state = |id: JobId| {
        let pool = db.pool.clone();
        async move { queue::get(&pool, id, None).await.unwrap().map(|v| v.state) }
    };
    assert_eq!(state(live).await, Some(JobState::Queued));
    assert_eq!(state(finished).await, Some(JobState::Completed));
    assert_eq!(state(late).await, Some(JobState::Completed));
    assert_eq!(state(JobId(hand_made)).await, Some(JobState::Completed));

    // The plan the pooled connections keep: the partitions outside the
    // bounds are pruned as the statement starts.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let text = include_str!("../sql/queue/get.sql");
    sqlx::query(&format!("PREPARE get_job AS {}", text.trim_end()))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE get_job('{}', NULL)",
        finished.0
    ))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let append = &plan[0]["Plan"]["Plans"][0];
    assert_eq!(append["Node Type"], "Append", "{plan:#}");
    let opened = append["Plans"].as_array().unwrap().len();
    let removed = append["Subplans Removed"].as_u64().unwrap();
    assert!(
        opened <= 6 && removed >= 33,
        "{opened} relations opened, {removed} pruned: {plan:#}"
    );
}

/// The transactions that write outcomes and read histories keep generic
/// plans, and the setting ends with them.
#[tokio::test]
async fn a_generic_plans_transaction_sets_the_mode_for_itself_only() {
    let db = TestDb::with_pool_size(1).await;
    let mode = |sql: &'static str| sqlx::query_scalar::<_, String>(sql);
    let mut tx = queue::begin_generic_plans(&db.pool).await.unwrap();
    assert_eq!(
        mode("SHOW plan_cache_mode")
            .fetch_one(&mut *tx)
            .await
            .unwrap(),
        "force_generic_plan"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        mode("SHOW plan_cache_mode")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        "auto"
    );
}
