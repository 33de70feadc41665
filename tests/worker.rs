//! The worker runtime against a real Postgres: wake-ups, shutdown, killed
//! workers, heartbeats, completion hooks.

mod common;

use common::{count, eventually, TestDb};
use futures_util::future::BoxFuture;
use serde_json::json;
use skipjack::ids::{ConversationId, JobId, TenantId};
use skipjack::queue::{self, JobState, NewJob, Outcome};
use skipjack::worker::{FinishedJob, Handler, JobContext, Worker, WorkerConfig};
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous bound for waits that must not hang; never a timing assertion.
const NO_HANG: Duration = Duration::from_secs(60);

type Behaviour = Arc<dyn Fn(JobContext) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// A handler for kind "test" that reports each start and then behaves as told.
#[derive(Clone)]
struct TestHandler {
    started: mpsc::UnboundedSender<JobId>,
    behaviour: Behaviour,
}

impl TestHandler {
    fn new<F, Fut>(f: F) -> (Self, mpsc::UnboundedReceiver<JobId>)
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Outcome> + Send + 'static,
    {
        let (started, rx) = mpsc::unbounded_channel();
        let behaviour: Behaviour = Arc::new(move |ctx| Box::pin(f(ctx)));
        (TestHandler { started, behaviour }, rx)
    }
}

impl Handler for TestHandler {
    fn kind(&self) -> &str {
        "test"
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let _ = self.started.send(ctx.job.id);
        (self.behaviour)(ctx).await
    }
}

fn completed() -> Outcome {
    Outcome::Completed {
        result: json!("ok"),
        usage: None,
    }
}

fn quiet_config() -> WorkerConfig {
    WorkerConfig {
        // Far longer than any test: only a NOTIFY can wake the worker.
        poll_interval: Duration::from_secs(3600),
        maintenance: None,
        ..WorkerConfig::default()
    }
}

async fn enqueue(pool: &PgPool, job: NewJob) -> JobId {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &job).await.unwrap().id
}

fn spawn_worker(worker: Arc<Worker>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move { worker.run(stop).await.unwrap() });
    (token, handle)
}

/// Waits until the worker found the queue empty, registered as a waiter and
/// went to sleep (its second, post-registration claim is done).
async fn wait_idle(worker: &Worker, pool: &PgPool, claims_before: u64) {
    eventually(NO_HANG, "worker idle and registered", || async {
        worker.claims() >= claims_before + 2
            && count(
                pool,
                "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_jobs'",
            )
            .await
                == 1
    })
    .await;
    // The claim counter moves before the claim's result is handled.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn listener_pid(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'skipjack-test-listener'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_worker_and_the_listener_survives_termination() {
    let db = TestDb::new().await;
    let (handler, mut started) = TestHandler::new(|_| async { completed() });
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(quiet_config())
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;

    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("woken by NOTIFY");
    assert_eq!(got, Some(id));

    // Kill the LISTEN connection; the listener must come back by itself.
    let old = listener_pid(&db.pool).await.expect("a LISTEN session");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);
    eventually(NO_HANG, "a new LISTEN session", || async {
        matches!(listener_pid(&db.pool).await, Some(pid) if pid != old)
    })
    .await;
    let claims = worker.claims();
    wait_idle(&worker, &db.pool, claims.saturating_sub(2)).await;

    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("woken after reconnect");
    assert_eq!(got, Some(id));

    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_history WHERE state = 'completed'"
        )
        .await,
        2
    );
    // A stopped worker no longer asks for NOTIFYs.
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM queue_waiters").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_wakes_only_as_much_claiming_as_needed() {
    let db = TestDb::new().await;
    let (handler, mut started) = TestHandler::new(|_| async { completed() });
    let config = WorkerConfig {
        concurrency: 200,
        ..quiet_config()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;
    let before = worker.claims();

    let burst: Vec<NewJob> = (0..100)
        .map(|i| NewJob::new("test", json!({ "i": i })))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &burst).await.unwrap();
    for _ in 0..100 {
        tokio::time::timeout(NO_HANG, started.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let claims = worker.claims() - before;
    // One claim takes the burst, one more finds the queue empty.
    assert!(
        claims <= 3,
        "{claims} claim statements for one burst of 100"
    );
    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM job_history").await,
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_short_jobs_and_releases_long_ones() {
    let db = TestDb::new().await;
    // The short job ends when the test says so; the long one never does.
    let gate = Arc::new(tokio::sync::Notify::new());
    let open_gate = gate.clone();
    let (handler, mut started) = TestHandler::new(move |ctx: JobContext| {
        let gate = gate.clone();
        async move {
            if ctx.job.payload["short"] == true {
                gate.notified().await;
            } else {
                std::future::pending::<()>().await;
            }
            completed()
        }
    });
    let config = WorkerConfig {
        shutdown_grace: Duration::from_secs(3),
        ..quiet_config()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;

    let short = enqueue(&db.pool, NewJob::new("test", json!({"short": true}))).await;
    let long = enqueue(&db.pool, NewJob::new("test", json!({"short": false}))).await;
    let mut seen = vec![
        tokio::time::timeout(NO_HANG, started.recv())
            .await
            .unwrap()
            .unwrap(),
        tokio::time::timeout(NO_HANG, started.recv())
            .await
            .unwrap()
            .unwrap(),
    ];
    seen.sort();
    let mut expected = vec![short, long];
    expected.sort();
    assert_eq!(seen, expected);

    // Shutdown begins; the short job then ends within the grace period,
    // the long one is given up when it is over.
    stop.cancel();
    open_gate.notify_one();
    tokio::time::timeout(NO_HANG, run)
        .await
        .expect("shutdown ends without waiting for the long job")
        .unwrap();

    let short_view = queue::get(&db.pool, short, None).await.unwrap().unwrap();
    assert_eq!(short_view.state, JobState::Completed);
    let long_view = queue::get(&db.pool, long, None).await.unwrap().unwrap();
    assert_eq!(
        long_view.state,
        JobState::Queued,
        "released, not left leased"
    );
    assert_eq!(long_view.attempts, 1, "the interrupted attempt counts");
    assert_eq!(long_view.worker, None);
    let events = queue::events(&db.pool, long).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "released");

    // Another worker takes it at once, without waiting for a lease to expire.
    let (fast, _rx) = TestHandler::new(|_| async { completed() });
    let other = Worker::builder(db.pool.clone())
        .register(fast)
        .config(quiet_config())
        .build()
        .unwrap();
    let report = other.run_once(10).await.unwrap();
    assert_eq!((report.claimed, report.completed), (1, 1));
    let long_view = queue::get(&db.pool, long, None).await.unwrap().unwrap();
    assert_eq!(
        (long_view.state, long_view.attempts),
        (JobState::Completed, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_rescued_and_completed_once_by_another() {
    let db = TestDb::new().await;
    // The first worker runs in a runtime of its own, which is then dropped
    // mid-job: no release, no completion, no more heartbeats, as if killed.
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let pool = PgPool::connect(&url).await.unwrap();
            let (handler, _rx) = TestHandler::new(|_| std::future::pending::<Outcome>());
            let config = WorkerConfig {
                id: "doomed".into(),
                lease: Duration::from_millis(900),
                poll_interval: Duration::from_millis(50),
                ..quiet_config()
            };
            let worker = Worker::builder(pool)
                .register(handler)
                .config(config)
                .build()
                .unwrap();
            worker.run(CancellationToken::new()).await.unwrap();
        });
        killed.recv().unwrap();
        rt.shutdown_background();
    });
    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    eventually(NO_HANG, "the doomed worker holds the job", || async {
        count(
            &db.pool,
            "SELECT count(*) FROM jobs WHERE lease_owner = 'doomed'",
        )
        .await
            == 1
    })
    .await;
    kill.send(()).unwrap();
    doomed.join().unwrap();

    let (handler, mut started) = TestHandler::new(|_| async { completed() });
    let config = WorkerConfig {
        id: "survivor".into(),
        poll_interval: Duration::from_millis(100),
        maintenance: Some(queue::maintenance::MaintenanceConfig {
            rescue_interval: Duration::from_millis(100),
            ..Default::default()
        }),
        ..WorkerConfig::default()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker);
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("rescued");
    assert_eq!(got, Some(id));
    eventually(NO_HANG, "completed", || async {
        count(&db.pool, "SELECT count(*) FROM job_history").await == 1
    })
    .await;
    stop.cancel();
    run.await.unwrap();

    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.attempts, 2);
    assert_eq!(view.worker.as_deref(), Some("survivor"));
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].event.as_str(), events[0].worker.as_deref()),
        ("rescued", Some("doomed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jittered_poll_brings_delayed_jobs_without_a_notify() {
    let db = TestDb::new().await;
    let (handler, mut started) = TestHandler::new(|_| async { completed() });
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(100),
        ..quiet_config()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    // A delayed job sends no NOTIFY, now or when it comes due.
    let before = chrono::Utc::now();
    let id = enqueue(
        &db.pool,
        NewJob::new("test", json!({})).with_delay(Duration::from_millis(300)),
    )
    .await;
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("picked up by the poll");
    assert_eq!(got, Some(id));
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    // run_at = (a clock reading after `before`) + 300 ms, and a claim needs
    // now() >= run_at (the database and the test share the machine's clock).
    // (1 ms for the database's microsecond rounding.)
    assert!(view.started_at.unwrap() >= before + chrono::Duration::milliseconds(299));
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_runs_more_jobs_than_its_concurrency() {
    let db = TestDb::new().await;
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let (handler, _rx) = TestHandler::new(move |_| {
        let (running, peak) = (r.clone(), p.clone());
        async move {
            use std::sync::atomic::Ordering::SeqCst;
            let now = running.fetch_add(1, SeqCst) + 1;
            peak.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            running.fetch_sub(1, SeqCst);
            completed()
        }
    });
    let jobs: Vec<NewJob> = (0..30)
        .map(|i| NewJob::new("test", json!({ "i": i })))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    let config = WorkerConfig {
        concurrency: 4,
        ..quiet_config()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker);
    eventually(NO_HANG, "all jobs done", || async {
        count(&db.pool, "SELECT count(*) FROM job_history").await == 30
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        peak.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "slots used fully, never exceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_alive_past_its_lease() {
    let db = TestDb::new().await;
    let (handler, _rx) = TestHandler::new(|_| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        completed()
    });
    let config = WorkerConfig {
        lease: Duration::from_millis(1200),
        ..quiet_config()
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(config)
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;
    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    // A rescuer running all along finds nothing to take.
    let mut rescued = 0;
    while count(&db.pool, "SELECT count(*) FROM job_history").await == 0 {
        let report = queue::rescue(&db.pool, 10).await.unwrap();
        rescued += report.requeued.len() + report.failed.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    run.await.unwrap();
    assert_eq!(rescued, 0);
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Completed, 1));
}

#[tokio::test]
async fn run_once_maps_every_outcome_and_survives_a_panicking_handler() {
    let db = TestDb::new().await;
    let (handler, _rx) = TestHandler::new(|ctx: JobContext| async move {
        match ctx.job.payload["do"].as_str().unwrap() {
            "ok" => completed(),
            "retry" => Outcome::Retry {
                error: "try later".into(),
                retry_after: None,
            },
            "fail" => Outcome::Failed {
                error: "bad input".into(),
            },
            _ => panic!("handler bug"),
        }
    });
    for action in ["ok", "retry", "fail", "panic"] {
        enqueue(&db.pool, NewJob::new("test", json!({ "do": action }))).await;
    }
    let worker = Worker::builder(db.pool.clone())
        .register(handler)
        .config(quiet_config())
        .build()
        .unwrap();
    let report = worker.run_once(10).await.unwrap();
    assert_eq!(report.claimed, 4);
    assert_eq!(
        (
            report.completed,
            report.retried,
            report.failed,
            report.lease_lost
        ),
        (1, 2, 1, 0)
    );
    let panicked: String =
        sqlx::query_scalar("SELECT last_error FROM jobs WHERE payload->>'do' = 'panic'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        panicked.contains("handler panicked: handler bug"),
        "{panicked}"
    );
}

/// Writes a row per completed job inside the completing transaction, with
/// what its attempt handed over.
struct Hooked {
    pool: PgPool,
}

impl Handler for Hooked {
    fn kind(&self) -> &str {
        "hooked"
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        if ctx.job.payload["stall"].as_bool() == Some(true) {
            // Stall past the lease: it expires and another process rescues
            // the job before this attempt reports.
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            )
            .bind(ctx.job.id)
            .execute(&self.pool)
            .await
            .unwrap();
            queue::rescue(&self.pool, 10).await.unwrap();
        }
        ctx.keep(format!(
            "worked out by attempt {} of {}",
            ctx.job.attempt, ctx.job.id
        ));
        completed()
    }

    async fn on_completed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<JobId> = jobs.iter().map(|f| f.job.id).collect();
        let kept: Vec<Option<String>> = jobs.iter().map(|f| f.kept::<String>().cloned()).collect();
        // With the plan mode of the transaction (begin_generic_plans.sql).
        sqlx::query(
            "INSERT INTO hook_log (job_id, kept, plans) \
             SELECT *, current_setting('plan_cache_mode') FROM unnest($1::uuid[], $2::text[])",
        )
        .bind(&ids)
        .bind(&kept)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn completion_hooks_commit_with_the_completion_and_are_fenced() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE hook_log (job_id uuid NOT NULL, kept text, plans text)")
        .execute(&db.pool)
        .await
        .unwrap();
    let fine = enqueue(&db.pool, NewJob::new("hooked", json!({}))).await;
    let stalled = enqueue(&db.pool, NewJob::new("hooked", json!({"stall": true}))).await;
    let worker = Worker::builder(db.pool.clone())
        .register(Hooked {
            pool: db.pool.clone(),
        })
        .config(quiet_config())
        .build()
        .unwrap();
    let report = worker.run_once(10).await.unwrap();
    assert_eq!((report.completed, report.lease_lost), (1, 1));
    let logged: Vec<(JobId, Option<String>)> = sqlx::query_as("SELECT job_id, kept FROM hook_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        logged,
        vec![(fine, Some(format!("worked out by attempt 1 of {fine}")))],
        "the fenced-off completion wrote nothing; the other got what its attempt kept"
    );
    // The completing transaction keeps generic plans, and only it.
    let plans: Vec<String> = sqlx::query_scalar("SELECT plans FROM hook_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(plans, ["force_generic_plan"]);
    let session: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(session, "auto");
    let view = queue::get(&db.pool, stalled, None).await.unwrap().unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Queued, 1));
}

/// Completes every job with a reply that holds a NUL (as a misbehaving LLM
/// might send), and records each job's tag inside the completing
/// transaction, in a table whose CHECK refuses the tag "poison": a database
/// that rejects one outcome of a batch.
struct Tagged;

impl Handler for Tagged {
    fn kind(&self) -> &str {
        "tagged"
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let tag = ctx.job.payload["tag"].as_str().unwrap();
        Outcome::Completed {
            result: json!({ "text": format!("{tag}\0end") }),
            usage: None,
        }
    }

    async fn on_completed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        jobs: &'a [&'a FinishedJob],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<JobId> = jobs.iter().map(|f| f.job.id).collect();
        let tags: Vec<String> = jobs
            .iter()
            .map(|f| f.job.payload["tag"].as_str().unwrap().to_owned())
            .collect();
        sqlx::query(
            "INSERT INTO tag_log (job_id, tag) SELECT * FROM unnest($1::uuid[], $2::text[])",
        )
        .bind(&ids)
        .bind(&tags)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn one_rejected_outcome_fails_alone_and_the_rest_of_its_batch_completes() {
    let db = TestDb::new().await;
    sqlx::query(
        "CREATE TABLE tag_log (job_id uuid NOT NULL,
                               tag text NOT NULL CONSTRAINT tag_not_poison CHECK (tag <> 'poison'))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let conversation = ConversationId::new();
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 't')")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO conversations (id, tenant_id, user_id) VALUES ($1, $2, 'u')")
        .bind(conversation)
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..9 {
        let tag = if i == 5 {
            "poison".to_owned()
        } else {
            format!("t{i}")
        };
        ids.push(enqueue(&db.pool, NewJob::new("tagged", json!({ "tag": tag }))).await);
    }
    // The poisoned job heads a conversation whose next turn waits for it.
    let head = enqueue(
        &db.pool,
        NewJob::new("tagged", json!({ "tag": "poison" }))
            .with_tenant(tenant)
            .with_conversation(conversation),
    )
    .await;
    let next = enqueue(
        &db.pool,
        NewJob::new("tagged", json!({ "tag": "after" }))
            .with_tenant(tenant)
            .with_conversation(conversation),
    )
    .await;
    let worker = Worker::builder(db.pool.clone())
        .register(Tagged)
        .config(quiet_config())
        .build()
        .unwrap();

    // One batch of ten: two rejected outcomes, eight good ones.
    let report = worker.run_once(20).await.unwrap();
    assert_eq!(report.claimed, 10);
    assert_eq!(
        (report.completed, report.failed, report.lease_lost),
        (8, 2, 0)
    );
    for (i, id) in ids.iter().enumerate() {
        let view = queue::get(&db.pool, *id, None).await.unwrap().unwrap();
        if i == 5 {
            assert_eq!((view.state, view.attempts), (JobState::Failed, 1));
            let error = view.error.unwrap();
            assert!(
                error.contains("could not be stored") && error.contains("tag_not_poison"),
                "{error}"
            );
        } else {
            assert_eq!((view.state, view.attempts), (JobState::Completed, 1));
            // The NUL was replaced, not a reason to lose the reply.
            assert_eq!(
                view.result.unwrap()["text"],
                json!(format!("t{i}\u{FFFD}end"))
            );
        }
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM tag_log").await, 8);

    // The conversation moved on: its next turn runs.
    assert_eq!(
        queue::get(&db.pool, head, None)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Failed
    );
    let report = worker.run_once(20).await.unwrap();
    assert_eq!((report.claimed, report.completed), (1, 1));
    assert_eq!(
        queue::get(&db.pool, next, None)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_at_shutdown_counts_the_attempt_until_the_job_fails() {
    let db = TestDb::new().await;
    // A job that always outlives the grace period.
    let (handler, mut started) = TestHandler::new(|_ctx: JobContext| async move {
        std::future::pending::<()>().await;
        completed()
    });
    let id = enqueue(
        &db.pool,
        NewJob::new("test", json!({})).with_max_attempts(2),
    )
    .await;
    for attempt in 1..=2 {
        let worker = Arc::new(
            Worker::builder(db.pool.clone())
                .register(handler.clone())
                .config(WorkerConfig {
                    shutdown_grace: Duration::from_millis(10),
                    poll_interval: Duration::from_millis(50),
                    ..quiet_config()
                })
                .build()
                .unwrap(),
        );
        let (stop, run) = spawn_worker(worker);
        tokio::time::timeout(NO_HANG, started.recv())
            .await
            .expect("the job starts")
            .unwrap();
        stop.cancel();
        run.await.unwrap();
        let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
        assert_eq!(view.attempts, attempt, "the interrupted attempt counts");
        let expected = if attempt < 2 {
            JobState::Queued
        } else {
            JobState::Failed
        };
        assert_eq!(view.state, expected);
    }
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!(
        view.error.as_deref(),
        Some("worker shut down during attempt 2 of 2")
    );
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.as_str(), e.attempt))
            .collect::<Vec<_>>(),
        vec![("released", 1), ("released", 2)]
    );
}

/// Sends its attempt number when dropped while armed.
struct CancelledGuard(Option<(i32, mpsc::UnboundedSender<i32>)>);

impl Drop for CancelledGuard {
    fn drop(&mut self) {
        if let Some((attempt, tx)) = self.0.take() {
            let _ = tx.send(attempt);
        }
    }
}

/// The lease of `id` has at least this many seconds left.
async fn lease_left(pool: &PgPool, id: JobId) -> f64 {
    sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM lease_expires_at - now())::float8, -1)
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_attempt_keeps_its_lease_until_its_outcome_is_written() {
    let db = TestDb::new().await;
    const LEASE: Duration = Duration::from_millis(1500);
    let (handler, mut started) = TestHandler::new(|_ctx: JobContext| async move { completed() });
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(WorkerConfig {
                lease: LEASE,
                completer_parallelism: 1,
                ..quiet_config()
            })
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;

    // A long reader's lock holds up the completer's first write (a slow
    // database)...
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_history IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    started.recv().await.unwrap();
    eventually(NO_HANG, "the first write waits for the lock", || async {
        count(
            &db.pool,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE c.relname = 'job_history' AND NOT l.granted",
        )
        .await
            >= 1
    })
    .await;
    // ...and the second job's outcome waits behind it (a completer backlog).
    let second = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    started.recv().await.unwrap();

    // Longer than a lease: the finished second attempt is still held.
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        lease_left(&db.pool, second).await > 0.0,
        "the finished attempt's lease was kept alive"
    );
    // (A rescuer would take it back had it expired; a rescue pass itself
    // would wait for the lock here, so the lease is read directly.)

    blocker.commit().await.unwrap();
    common::eventually(NO_HANG, "both written", || async {
        count(&db.pool, "SELECT count(*) FROM job_history").await == 2
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    for id in [first, second] {
        let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
        assert_eq!((view.state, view.attempts), (JobState::Completed, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claimed_again_by_the_same_worker_is_neither_cancelled_nor_orphaned_by_its_old_attempt(
) {
    let db = TestDb::new().await;
    const LEASE: Duration = Duration::from_millis(1500);
    // Attempt 1 stalls until told to finish (or until cancelled); attempt 2
    // runs until told to finish, and says if it was cancelled.
    let finish_first = Arc::new(tokio::sync::Notify::new());
    let finish_second = Arc::new(tokio::sync::Notify::new());
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel::<i32>();
    let (handler, mut started) = {
        let (first, second) = (finish_first.clone(), finish_second.clone());
        TestHandler::new(move |ctx: JobContext| {
            let (first, second, cancelled) = (first.clone(), second.clone(), cancelled_tx.clone());
            async move {
                let attempt = ctx.job.attempt;
                let go = if attempt == 1 { first } else { second };
                // The worker drops a cancelled attempt's future: say so then.
                let mut on_drop = CancelledGuard(Some((attempt, cancelled)));
                go.notified().await;
                on_drop.0 = None;
                Outcome::Completed {
                    result: json!({ "attempt": attempt }),
                    usage: None,
                }
            }
        })
    };
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(WorkerConfig {
                lease: LEASE,
                ..quiet_config()
            })
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;
    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    started.recv().await.unwrap();

    // Attempt 1 stalls past its lease; a rescuer takes the job back and the
    // same worker claims it again as attempt 2.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queue::rescue(&db.pool, 10).await.unwrap().requeued,
        vec![id]
    );
    started.recv().await.unwrap();
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 2);

    // The heartbeat cancels attempt 1 (its lease is gone) and only it.
    let first_cancelled = tokio::time::timeout(LEASE * 4, cancelled.recv())
        .await
        .expect("the stale attempt is cancelled")
        .unwrap();
    assert_eq!(first_cancelled, 1);
    // Attempt 1 ends; attempt 2 keeps its lease for longer than a lease.
    finish_first.notify_one();
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        lease_left(&db.pool, id).await > 0.0,
        "attempt 2 is still heartbeated"
    );
    assert!(cancelled.try_recv().is_err(), "attempt 2 was not cancelled");

    finish_second.notify_one();
    common::eventually(NO_HANG, "attempt 2 written", || async {
        count(&db.pool, "SELECT count(*) FROM job_history").await == 1
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Completed, 2));
    assert_eq!(view.result.unwrap(), json!({ "attempt": 2 }));
}

/// The backend of an outcome write (`finish.sql`) that is waiting for a row
/// lock in this test's database, if there is one.
async fn finish_waiting_for_a_lock(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND position('finish: writes the outcomes' in query) > 0",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completer_writes_an_outcome_again_after_losing_its_connection() {
    let db = TestDb::new().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let open_gate = gate.clone();
    let (handler, mut started) = TestHandler::new(move |_| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            completed()
        }
    });
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(quiet_config())
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;
    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("the job started");
    assert_eq!(got, Some(id));

    // Hold the job's row, then let the handler finish: its outcome write
    // waits for the row.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    open_gate.notify_one();
    let deadline = tokio::time::Instant::now() + NO_HANG;
    let first = loop {
        if let Some(pid) = finish_waiting_for_a_lock(&db.pool).await {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outcome write never waited for the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Its connection dies under it.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);

    // The completer writes the outcome again, on another connection (the
    // row is still held, so that write waits too).
    eventually(
        NO_HANG,
        "the outcome written again on a new connection",
        || async { matches!(finish_waiting_for_a_lock(&db.pool).await, Some(pid) if pid != first) },
    )
    .await;
    holder.commit().await.unwrap();
    eventually(NO_HANG, "the job finished", || async {
        count(&db.pool, "SELECT count(*) FROM job_history").await == 1
    })
    .await;

    // Finished once, in its first and only attempt.
    let (state, attempts): (JobState, i32) =
        sqlx::query_as("SELECT state, attempts FROM job_history WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state, attempts), (JobState::Completed, 1));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM job_events").await, 0);
    stop.cancel();
    tokio::time::timeout(NO_HANG, run)
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(started.try_recv().is_err(), "the handler ran once");
}

/// Makes the test's database refuse connections (`true`) or take them again,
/// from a connection to the server's maintenance database; refusing also
/// ends every session it has.
async fn refuse_connections(db: &TestDb, refuse: bool) {
    let mut admin = PgConnection::connect(&common::admin_url()).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}",
        db.name, !refuse
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    if refuse {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db.name)
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

/// Most claim failures that can fall within `window` when the producer
/// pauses after each one for at least `first`, doubling up to `most`.
fn failures_within(window: Duration, first: Duration, most: Duration) -> u64 {
    let (mut n, mut spent, mut pause) = (1, Duration::ZERO, first);
    while spent + pause <= window {
        spent += pause;
        pause = (pause * 2).min(most);
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_backs_off_while_the_database_is_down_and_claims_again_after() {
    let db = TestDb::new().await;
    let (handler, mut started) = TestHandler::new(|_| async { completed() });
    let poll = Duration::from_secs(1);
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(WorkerConfig {
                poll_interval: poll,
                queue_gauges: None,
                ..quiet_config()
            })
            .build()
            .unwrap(),
    );
    let (stop, run) = spawn_worker(worker.clone());
    wait_idle(&worker, &db.pool, 0).await;

    refuse_connections(&db, true).await;
    eventually(NO_HANG, "a claim failed", || async {
        worker.failed_claims() > 0
    })
    .await;
    // Count the failures over a few pauses: the producer waits 50 ms after
    // the first, doubling up to the poll interval, so however slow or fast
    // the machine, no more than that many fit into the time that passed.
    let began = std::time::Instant::now();
    let before = worker.failed_claims();
    eventually(NO_HANG, "five more failed claims", || async {
        worker.failed_claims() >= before + 5
    })
    .await;
    let failed = worker.failed_claims() - before;
    let window = began.elapsed();
    let most = failures_within(window, Duration::from_millis(50), poll);
    assert!(
        failed <= most,
        "{failed} failed claims in {window:?}: at most {most} with back-off"
    );

    // Back: the next claim takes the job.
    refuse_connections(&db, false).await;
    let id = enqueue(&db.pool, NewJob::new("test", json!({}))).await;
    let got = tokio::time::timeout(NO_HANG, started.recv())
        .await
        .expect("claimed once the database is back");
    assert_eq!(got, Some(id));
    stop.cancel();
    tokio::time::timeout(NO_HANG, run)
        .await
        .expect("the worker stops")
        .unwrap();
}
