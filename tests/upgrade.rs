//! Rolling upgrades: the schema compatibility window, `/ready` while a
//! migration lands, the no-transaction migration runner, and a real
//! rollout (migrate, then the API processes, then the workers, one by one)
//! under steady load with zero failed requests and zero lost turns.
//!
//! The processes are the real `api`, `worker` and `skipjack` binaries. A
//! process runs at the schema it found when it started (`db::Schema`), so
//! the processes started on a database at schema 5 are the old build in
//! every respect that matters to the database: they neither write nor read
//! what migration 6 adds, and their `/ready` judges migration 6 by its
//! declared compatibility, exactly as a build without it would.

mod common;

use common::{admin_url, count, TestDb};
use serde_json::Value;
use skipjack::db::{self, DbError, Schema};
use skipjack::health::SchemaWatch;
use skipjack::llm::settings::Secret;
use skipjack::tenants;
use skipjack_tools::loadgen::check::{
    check_transcript, expected_reply, turn_message, StoredMessage,
};
use skipjack_tools::loadgen::client::{ApiClient, Submitted};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// An empty database (not from the migrated template), dropped on drop.
struct EmptyDb {
    name: String,
    url: String,
}

impl EmptyDb {
    async fn new() -> EmptyDb {
        let name = format!("skipjack_test_upgrade_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = db::with_database(&admin_url(), &name);
        EmptyDb { name, url }
    }

    /// A database migrated up to `version`.
    async fn at(version: u32) -> EmptyDb {
        let db = EmptyDb::new().await;
        db::migrate_to(&db.url, Some(version)).await.unwrap();
        db
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for EmptyDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Records a migration newer than this build as applied, with the
/// compatibility it declares: what a newer build's `skipjack migrate`
/// leaves behind.
async fn apply_future_migration(pool: &PgPool, version: i32, name: &str, oldest_compatible: i32) {
    sqlx::query(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES ($1, $2, '2030-01-01T00:00:00Z', '1')",
    )
    .bind(version)
    .bind(name)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO schema_compat (version, oldest_compatible) VALUES ($1, $2)
         ON CONFLICT (version) DO UPDATE SET oldest_compatible = excluded.oldest_compatible",
    )
    .bind(version)
    .bind(oldest_compatible)
    .execute(pool)
    .await
    .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `api` or `worker` process and its HTTP address.
struct Proc {
    name: String,
    child: Child,
    url: String,
}

impl Proc {
    fn api(name: &str, database_url: &str) -> Proc {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_api"));
        cmd.env("SKIPJACK_API_ADDR", format!("127.0.0.1:{port}"))
            .env("SKIPJACK_SHUTDOWN_GRACE_SECONDS", "10");
        Self::spawn(name, cmd, database_url, port)
    }

    fn worker(name: &str, database_url: &str) -> Proc {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.env("SKIPJACK_WORKER_ADDR", format!("127.0.0.1:{port}"))
            .env("SKIPJACK_WORKER_ID", name)
            .env("SKIPJACK_CONCURRENCY", "50")
            .env("SKIPJACK_POLL_INTERVAL_MS", "200")
            .env("SKIPJACK_SHUTDOWN_GRACE_SECONDS", "10")
            .env("SKIPJACK_LLM_PROVIDER", "simulated")
            .env("SKIPJACK_SIMULATED_LATENCY_MS", "20")
            .env("SKIPJACK_SIMULATED_JITTER_MS", "10")
            .env("SKIPJACK_SIMULATED_FAILURE_RATE", "0")
            .env_remove("REDIS_URL");
        Self::spawn(name, cmd, database_url, port)
    }

    fn spawn(name: &str, mut cmd: Command, database_url: &str, port: u16) -> Proc {
        cmd.env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .kill_on_drop(true);
        Proc {
            name: name.to_owned(),
            child: cmd.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/ready` answers 200; returns its body.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before it was ready: {status}", self.name);
            }
            if let Some((200, body)) = ready(http, &self.url).await {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; the process must drain and exit 0.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop after SIGTERM", self.name))
            .unwrap();
        assert!(exit.success(), "{} exited with {exit}", self.name);
    }
}

/// `/ready`'s status and body, or `None` when the process does not answer.
async fn ready(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = http
        .get(format!("{url}/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test]
async fn a_process_on_an_older_schema_names_the_missing_migration() {
    let db = EmptyDb::at(4).await;
    for binary in [env!("CARGO_BIN_EXE_api"), env!("CARGO_BIN_EXE_worker")] {
        let output = Command::new(binary)
            .env("DATABASE_URL", &db.url)
            .env("SKIPJACK_API_ADDR", "127.0.0.1:0")
            .env("SKIPJACK_WORKER_ADDR", "127.0.0.1:0")
            .env("RUST_BACKTRACE", "0")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("lacks migration V5__schema_compat: run `skipjack migrate`"),
            "{binary}: {stderr}"
        );
    }
    // After `skipjack migrate`, the same build starts.
    let pool = db.pool().await;
    db::migrate(&db.url).await.unwrap();
    assert_eq!(db::check_schema(&pool).await.unwrap(), Schema::current());
}

#[tokio::test]
async fn a_process_runs_on_a_newer_compatible_schema_and_not_on_an_incompatible_one() {
    let db = TestDb::new().await;
    let build = Schema::current().version();
    // A newer build's expand migration, compatible with this build.
    let future = build + 100;
    apply_future_migration(&db.pool, future, "future_expand", build).await;

    let http = reqwest::Client::new();
    let mut api = Proc::api("api", &db.url);
    let body = api.wait_ready(&http).await;
    assert_eq!(body["schema_version"], build, "{body}");

    // Then a contract migration lands that this build cannot run with:
    // the running process turns unready (within the refresh interval) and
    // says why; a process started now refuses to start.
    apply_future_migration(&db.pool, future + 1, "future_contract", future + 1).await;
    let reason = loop {
        let (status, body) = ready(&http, &api.url).await.expect("answers");
        if status == 503 {
            break body["reason"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let label = format!("V{}__future_contract", future + 1);
    assert!(
        reason.contains(&format!(
            "has migration {label}, which works only with builds at schema version {}",
            future + 1
        )),
        "{reason}"
    );
    let err = db::check_schema(&db.pool).await.unwrap_err();
    assert!(
        matches!(&err, DbError::Incompatible { migration, .. } if *migration == label),
        "{err}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("DATABASE_URL", &db.url)
        .env("SKIPJACK_WORKER_ADDR", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&label), "{stderr}");
    api.terminate().await;
}

#[tokio::test]
async fn ready_stays_true_while_a_compatible_migration_lands() {
    let db = EmptyDb::at(5).await;
    let pool = db.pool().await;
    let schema = db::check_schema(&pool).await.unwrap();
    assert_eq!(schema.version(), 5);
    // No caching: every probe asks the database, so the window alone must
    // keep the answer steady.
    let watch = SchemaWatch::with_refresh(pool.clone(), schema, Duration::ZERO);
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (watch, done) = (watch.clone(), done.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) {
                answers.push(watch.status().await);
            }
            answers.push(watch.status().await);
            answers
        })
    };
    let applied = db::migrate(&db.url).await.unwrap();
    assert!(
        applied.contains(&"V6__message_model".to_owned()),
        "{applied:?}"
    );
    done.store(true, Ordering::SeqCst);
    let answers = prober.await.unwrap();
    assert!(answers.len() > 1);
    let failed: Vec<_> = answers.iter().filter_map(|a| a.clone().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    // A process started now runs at the new schema (the newest this build
    // knows).
    assert_eq!(
        db::check_schema(&pool).await.unwrap().version(),
        Schema::current().version()
    );
}

#[tokio::test]
async fn ready_answers_from_its_cache_between_refreshes() {
    let db = TestDb::new().await;
    let schema = db::check_schema(&db.pool).await.unwrap();
    let cached = SchemaWatch::with_refresh(db.pool.clone(), schema, Duration::from_secs(3600));
    cached.status().await.unwrap();
    let future = schema.version() + 100;
    apply_future_migration(&db.pool, future, "future_contract", future).await;
    // The cached answer stands until the next refresh...
    cached.status().await.unwrap();
    // ...which sees the change.
    let fresh = SchemaWatch::with_refresh(db.pool.clone(), schema, Duration::ZERO);
    let reason = fresh.status().await.unwrap_err();
    assert!(reason.contains("future_contract"), "{reason}");
}

#[tokio::test]
async fn the_no_transaction_migration_is_recorded_like_refinery_and_can_be_rerun() {
    let db = EmptyDb::at(5).await;
    let pool = db.pool().await;
    // Refinery alone would run V6 in a transaction, where CREATE INDEX
    // CONCURRENTLY fails: applying it at all needs the runner. (Newer
    // migrations follow it.)
    let applied = db::migrate(&db.url).await.unwrap();
    assert_eq!(
        applied.first().map(String::as_str),
        Some("V6__message_model"),
        "{applied:?}"
    );
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'messages_job'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
    // Refinery verifies the recorded checksum on every run: a row that
    // differed would fail here as a divergent migration.
    assert!(db::migrate(&db.url).await.unwrap().is_empty());
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM schema_compat WHERE version = 6 AND oldest_compatible = 5"
        )
        .await,
        1
    );
    // A run interrupted during the index build leaves an invalid index
    // and no history row; the next run rebuilds it.
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'messages_job'::regclass",
    )
    .execute(&pool)
    .await
    .unwrap();
    // (and none for the migrations after it, which that run never reached:
    // they run again, and must be rerunnable too).
    sqlx::query("DELETE FROM refinery_schema_history WHERE version >= 6")
        .execute(&pool)
        .await
        .unwrap();
    let applied = db::migrate(&db.url).await.unwrap();
    assert_eq!(
        applied.first().map(String::as_str),
        Some("V6__message_model"),
        "{applied:?}"
    );
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'messages_job'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
}

#[tokio::test]
async fn reads_at_schema_5_ignore_the_model_column() {
    use skipjack::chat::store;
    use skipjack::ids::JobId;
    let db = TestDb::new().await;
    let tenant = tenants::create_tenant_with_key(&db.pool, "t", None)
        .await
        .unwrap()
        .tenant;
    let mut conn = db.pool.acquire().await.unwrap();
    let conversation = store::default_conversation(&mut conn, tenant, "u")
        .await
        .unwrap();
    let turn = store::Turn {
        conversation,
        job: JobId::new(),
        user_message: "hi",
        assistant_message: "hello",
        user_tokens: Some(1),
        assistant_tokens: Some(1),
    };
    store::append_turns_with_models(&mut conn, &[turn], Some(&["m-1"]))
        .await
        .unwrap();
    let at_6 = store::list_messages_at(&db.pool, conversation, Schema::at(6))
        .await
        .unwrap();
    assert_eq!(at_6[0].model, None);
    assert_eq!(at_6[1].model.as_deref(), Some("m-1"));
    let at_5 = store::list_messages_at(&db.pool, conversation, Schema::at(5))
        .await
        .unwrap();
    assert_eq!(at_5.len(), 2);
    assert!(at_5.iter().all(|m| m.model.is_none()));
}

// --- The rollout under load -------------------------------------------------

/// The API processes in service, as a load balancer sees them, with the
/// requests each has in flight.
#[derive(Default)]
struct Balancer {
    backends: Mutex<Vec<(String, ApiClient, Arc<AtomicUsize>)>>,
    next: AtomicUsize,
}

impl Balancer {
    fn add(&self, url: &str, key: &Secret) {
        let client = ApiClient::new(url, key.clone(), 64).unwrap();
        self.backends
            .lock()
            .unwrap()
            .push((url.to_owned(), client, Arc::new(AtomicUsize::new(0))));
    }

    /// Takes `url` out of rotation; returns its in-flight counter.
    fn remove(&self, url: &str) -> Arc<AtomicUsize> {
        let mut backends = self.backends.lock().unwrap();
        let at = backends.iter().position(|(u, _, _)| u == url).unwrap();
        backends.remove(at).2
    }

    /// The next backend, round robin, counted in flight until the guard drops.
    fn pick(&self) -> (ApiClient, InFlight) {
        let backends = self.backends.lock().unwrap();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % backends.len();
        let (_, client, in_flight) = &backends[i];
        in_flight.fetch_add(1, Ordering::SeqCst);
        (client.clone(), InFlight(in_flight.clone()))
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the virtual users saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    completed_turns: AtomicU64,
    /// Every failed request or wrong reply, described.
    failures: Mutex<Vec<String>>,
    /// (when, phase, latency) of every submission.
    submits: Mutex<Vec<(u8, Duration)>>,
    /// The current phase: 0 before the migration, 1 during the rollout, 2 after.
    phase: std::sync::atomic::AtomicU8,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn completed(&self) -> u64 {
        self.completed_turns.load(Ordering::SeqCst)
    }

    async fn wait_for_turns(&self, more: u64) {
        let target = self.completed() + more;
        common::eventually(Duration::from_secs(120), "turns completing", || async {
            self.completed() >= target
        })
        .await;
    }
}

/// One virtual user: submits turn k, long-polls it to the end, checks the
/// reply is `echo(2k-1)`, thinks, and goes on until `stop`. Returns the
/// messages of its completed turns and its conversation.
async fn user(
    id: String,
    balancer: Arc<Balancer>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Option<String>) {
    let mut completed: Vec<String> = Vec::new();
    let mut conversation = None;
    while !stop.load(Ordering::SeqCst) {
        let k = completed.len() as u64 + 1;
        let message = turn_message(&id, k);
        let key = format!("{id}-{k}");
        // Submit (again after a failure: the idempotency key makes it safe).
        let job = loop {
            let (client, _in_flight) = balancer.pick();
            let started = Instant::now();
            let outcome = client.submit(&id, &message, &key, 1).await;
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let phase = tally.phase.load(Ordering::SeqCst);
            tally
                .submits
                .lock()
                .unwrap()
                .push((phase, started.elapsed()));
            match outcome {
                Submitted::Accepted {
                    job_id,
                    conversation_id,
                } => {
                    conversation = conversation.or(conversation_id);
                    break job_id;
                }
                Submitted::Rejected { retry_after } => {
                    tally.fail(format!("{key}: 429"));
                    tokio::time::sleep(retry_after).await;
                }
                Submitted::Failed(e) => {
                    tally.fail(format!("{key}: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // Long-poll until finished, through whichever API is in service.
        loop {
            let (client, _in_flight) = balancer.pick();
            let polled = client.poll(&job, Duration::from_secs(2)).await;
            tally.requests.fetch_add(1, Ordering::Relaxed);
            match polled {
                Ok(status) if status.is_finished() => {
                    let want = expected_reply(k - 1, &message);
                    if status.status != "completed" || status.response.as_deref() != Some(&want) {
                        tally.fail(format!(
                            "{key}: {} {:?}, expected {want:?}",
                            status.status, status.response
                        ));
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tally.fail(format!("{key} poll: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        completed.push(message);
        tally.completed_turns.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (completed, conversation)
}

/// Polls `/ready` of every process in service; collects every answer
/// that is not 200.
struct Prober {
    in_service: Arc<Mutex<HashMap<String, String>>>,
    problems: Arc<Mutex<Vec<String>>>,
    probes: Arc<AtomicU64>,
}

impl Prober {
    fn spawn(stop: Arc<AtomicBool>) -> (Prober, tokio::task::JoinHandle<()>) {
        let prober = Prober {
            in_service: Arc::default(),
            problems: Arc::default(),
            probes: Arc::default(),
        };
        let (in_service, problems, probes) = (
            prober.in_service.clone(),
            prober.problems.clone(),
            prober.probes.clone(),
        );
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                let targets: Vec<(String, String)> = in_service
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(n, u)| (n.clone(), u.clone()))
                    .collect();
                for (name, url) in targets {
                    let answer = ready(&http, &url).await;
                    probes.fetch_add(1, Ordering::Relaxed);
                    // Only processes still in service count.
                    if !in_service.lock().unwrap().contains_key(&name) {
                        continue;
                    }
                    if !matches!(answer, Some((200, _))) {
                        problems.lock().unwrap().push(format!("{name}: {answer:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (prober, task)
    }

    fn watch(&self, proc: &Proc) {
        self.in_service
            .lock()
            .unwrap()
            .insert(proc.name.clone(), proc.url.clone());
    }

    fn unwatch(&self, proc: &Proc) {
        self.in_service.lock().unwrap().remove(&proc.name);
    }
}

fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get((sorted.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rolling_upgrade_under_load_loses_nothing() {
    const USERS: usize = 16;
    let db = EmptyDb::at(5).await;
    let pool = db.pool().await;
    let key = Secret::new(
        tenants::create_tenant_with_key(&pool, "rollout", None)
            .await
            .unwrap()
            .secret()
            .to_owned(),
    );
    let http = reqwest::Client::new();

    // The old build: two API processes and two workers at schema 5.
    let mut apis = Vec::new();
    let mut workers = Vec::new();
    for i in 1..=2 {
        apis.push(Proc::api(&format!("api-old-{i}"), &db.url));
        workers.push(Proc::worker(&format!("worker-old-{i}"), &db.url));
    }
    let stop_probes = Arc::new(AtomicBool::new(false));
    let (prober, probe_task) = Prober::spawn(stop_probes.clone());
    let balancer = Arc::new(Balancer::default());
    for proc in apis.iter_mut().chain(workers.iter_mut()) {
        let body = proc.wait_ready(&http).await;
        assert_eq!(body["schema_version"], 5, "{}: {body}", proc.name);
        prober.watch(proc);
    }
    for api in &apis {
        balancer.add(&api.url, &key);
    }

    // Steady load.
    let tally = Arc::new(Tally::default());
    let stop_users = Arc::new(AtomicBool::new(false));
    let users: Vec<_> = (0..USERS)
        .map(|i| {
            tokio::spawn(user(
                format!("u{i}-{}", uuid::Uuid::now_v7().simple()),
                balancer.clone(),
                tally.clone(),
                stop_users.clone(),
            ))
        })
        .collect();
    tally.wait_for_turns(100).await;

    // 1. Migrate, while the old build serves.
    tally.phase.store(1, Ordering::SeqCst);
    let rollout_started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("applied V6__message_model"), "{stderr}");
    tally.wait_for_turns(50).await;

    // 2. The API processes, one by one: start the new one, wait until it
    // is ready, put it in rotation, take the old one out, let its requests
    // finish, SIGTERM it.
    for (i, old) in std::mem::take(&mut apis).into_iter().enumerate() {
        let mut new = Proc::api(&format!("api-new-{}", i + 1), &db.url);
        let body = new.wait_ready(&http).await;
        assert_eq!(
            body["schema_version"],
            Schema::current().version(),
            "{body}"
        );
        prober.watch(&new);
        balancer.add(&new.url, &key);
        let in_flight = balancer.remove(&old.url);
        common::eventually(Duration::from_secs(30), "old API drained", || async {
            in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        prober.unwatch(&old);
        old.terminate().await;
        apis.push(new);
        tally.wait_for_turns(30).await;
    }

    // 3. The workers, one by one.
    for (i, old) in std::mem::take(&mut workers).into_iter().enumerate() {
        let mut new = Proc::worker(&format!("worker-new-{}", i + 1), &db.url);
        let body = new.wait_ready(&http).await;
        assert_eq!(
            body["schema_version"],
            Schema::current().version(),
            "{body}"
        );
        prober.watch(&new);
        prober.unwatch(&old);
        old.terminate().await;
        workers.push(new);
        tally.wait_for_turns(30).await;
    }
    let rollout = rollout_started.elapsed();
    let last_old_worker_gone: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();

    // 4. The new build alone.
    tally.phase.store(2, Ordering::SeqCst);
    tally.wait_for_turns(100).await;
    stop_users.store(true, Ordering::SeqCst);
    let mut transcripts = Vec::new();
    for task in users {
        transcripts.push(task.await.unwrap());
    }
    stop_probes.store(true, Ordering::SeqCst);
    probe_task.await.unwrap();

    // Figures.
    let submits = tally.submits.lock().unwrap().clone();
    let by_phase = |p: u8| -> Vec<Duration> {
        submits
            .iter()
            .filter(|(phase, _)| *phase == p)
            .map(|(_, d)| *d)
            .collect()
    };
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "rollout: {} requests ({} submissions), {} failed, {} turns, {} readiness probes; \
         rollout took {:.1} s; submission p99 before {:?}, during {:?} ({} submissions), after {:?}",
        tally.requests.load(Ordering::Relaxed),
        submits.len(),
        failures.len(),
        tally.completed(),
        prober.probes.load(Ordering::Relaxed),
        rollout.as_secs_f64(),
        p99(&by_phase(0)),
        p99(&by_phase(1)),
        by_phase(1).len(),
        p99(&by_phase(2)),
    );

    // Zero failed requests, and no process in service ever unready.
    assert!(failures.is_empty(), "{failures:?}");
    let problems = prober.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");

    // Zero lost turns: every conversation holds exactly the turns that
    // completed, in order, each once.
    let reader = ApiClient::new(&apis[0].url, key.clone(), 4).unwrap();
    let mut turns = 0;
    for (completed, conversation) in &transcripts {
        let conversation = conversation.as_deref().expect("a conversation");
        let stored: Vec<StoredMessage> = reader.messages(conversation).await.unwrap();
        if let Some(problem) = check_transcript(completed, &stored) {
            panic!("conversation {conversation}: {problem}");
        }
        turns += completed.len();
    }
    assert_eq!(turns as u64, tally.completed());
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM job_history WHERE state <> 'completed'"
        )
        .await,
        0
    );

    // The new build uses what V6 added: replies written once only new
    // workers ran carry their model, those of the old build none; the new
    // API returns it.
    let old_replies = count(
        &pool,
        "SELECT count(*) FROM messages WHERE role = 'assistant' AND model IS NULL",
    )
    .await;
    assert!(old_replies > 0);
    let late_without_model: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE role = 'assistant' AND model IS NULL AND created_at > $1",
    )
    .bind(last_old_worker_gone)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(late_without_model, 0);
    let (_, conversation) = &transcripts[0];
    let body: Value = http
        .get(format!(
            "{}/v1/conversations/{}/messages",
            apis[0].url,
            conversation.as_deref().unwrap()
        ))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "assistant");
    assert_eq!(last["model"], "simulated", "{last}");

    for proc in apis.into_iter().chain(workers) {
        proc.terminate().await;
    }
}
