//! The fault suite: the whole stack (the `api` binary, two `worker`
//! binaries, a Postgres cluster of the test's own) under the faults of a bad
//! day in production, all in one run, ending with the integrity check.
//!
//! Injected: an LLM upstream (a local mock speaking the OpenAI-compatible
//! API and answering like the simulated provider, `echo(N): MESSAGE`) that
//! puts NUL bytes in replies, answers `Retry-After: 0` and `Retry-After:
//! 86400`, fails 20% of requests with a 5xx whose body holds a NUL, and
//! hangs 5% past the request timeout; a worker killed with SIGKILL every few
//! seconds (and started again); the LISTEN backends terminated; Postgres
//! crashed and restarted; and a reader holding `job_history` open while
//! housekeeping drops a partition.
//!
//! Virtual users each submit turns one after another (with an idempotency
//! key per turn, retrying through errors) and long-poll each to its end.
//! The integrity check: every turn answered once, in order, or failed with a
//! reason; no job left live (no conversation stuck); no duplicate job. The
//! suite prints a table: fault, jobs affected, attempts used, outcome.
//!
//! `SKIPJACK_FAULTS_SECONDS` sets the length of the run (default 40, the
//! short form the test command runs); `scripts/faults.sh` runs the long one.

mod common;
#[allow(dead_code)]
mod common_llm;

use common::private_pg::PrivatePg;
use common_llm::{MockServer, Recorded, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use skipjack::{db, tenants};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// What the mock upstream does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    Ok,
    NulInReply,
    RetryAfterZero,
    RetryAfterDay,
    ServerErrorWithNul,
    Hang,
}

impl Fault {
    fn pick(rng: &mut StdRng) -> Fault {
        match rng.gen_range(0..100) {
            0..=9 => Fault::NulInReply,
            10..=14 => Fault::RetryAfterZero,
            15..=17 => Fault::RetryAfterDay,
            18..=37 => Fault::ServerErrorWithNul,
            38..=42 => Fault::Hang,
            _ => Fault::Ok,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Ok => "none (plain reply)",
            Fault::NulInReply => "NUL bytes in the reply",
            Fault::RetryAfterZero => "429 Retry-After: 0",
            Fault::RetryAfterDay => "429 Retry-After: 86400",
            Fault::ServerErrorWithNul => "500 with NUL in the body (20%)",
            Fault::Hang => "hang past the timeout (5%)",
        }
    }
}

/// The request timeout the workers get; `Fault::Hang` answers after it.
const LLM_TIMEOUT_SECONDS: u64 = 1;

/// The mock upstream: every request's fault, by the turn's message.
struct Upstream {
    server: MockServer,
    faults: Arc<Mutex<HashMap<String, Vec<Fault>>>>,
}

async fn start_upstream() -> Upstream {
    let faults: Arc<Mutex<HashMap<String, Vec<Fault>>>> = Arc::default();
    let rng = Mutex::new(StdRng::seed_from_u64(9));
    let seen = faults.clone();
    let server = MockServer::start(move |r: &Recorded| {
        let messages = r.body["messages"].as_array().cloned().unwrap_or_default();
        let turns: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
        let message = turns
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let fault = Fault::pick(&mut rng.lock().unwrap());
        seen.lock()
            .unwrap()
            .entry(message.clone())
            .or_default()
            .push(fault);
        let reply = format!("echo({}): {message}", turns.len());
        let limited = json!({"error": {"message": "rate limited", "type": "rate_limit"}});
        match fault {
            Fault::Ok => Reply::openai_ok(&reply),
            Fault::NulInReply => Reply::openai_ok(&format!("{reply}\0")),
            Fault::RetryAfterZero => Reply::json(429, limited).header("retry-after", "0"),
            Fault::RetryAfterDay => Reply::json(429, limited).header("retry-after", "86400"),
            Fault::ServerErrorWithNul => Reply::text(500, "upstream \0 broke"),
            Fault::Hang => {
                Reply::openai_ok(&reply).delay(Duration::from_secs(LLM_TIMEOUT_SECONDS + 2))
            }
        }
    })
    .await;
    Upstream { server, faults }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `binary` with `env`, its output in `log`.
fn spawn(binary: &str, env: &[(&str, String)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(binary);
    cmd.env("RUST_LOG", "warn")
        .env("SKIPJACK_LOG_FORMAT", "text")
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
}

/// A running worker process, started again after each kill.
struct WorkerProcess {
    env: Vec<(&'static str, String)>,
    log: std::path::PathBuf,
    child: Child,
}

impl WorkerProcess {
    fn start(env: Vec<(&'static str, String)>, log: std::path::PathBuf) -> WorkerProcess {
        let child = spawn(env!("CARGO_BIN_EXE_worker"), &env, &log);
        WorkerProcess { env, log, child }
    }

    /// SIGKILL, then a new process in its place.
    async fn kill_and_restart(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        let log = self.log.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        self.child = spawn(env!("CARGO_BIN_EXE_worker"), &self.env, &log);
    }
}

/// One turn as its user saw it.
#[derive(Clone, Debug)]
struct Turn {
    user: usize,
    k: usize,
    job_id: String,
    status: String,
}

/// Client-side counters.
#[derive(Default)]
struct Client {
    /// Requests that failed (connection errors, 5xx, 429) and were retried.
    retried_requests: AtomicU64,
}

/// One virtual user: turns until `stop`, each submitted (retried with the
/// same idempotency key through any error) and long-polled to its end.
async fn user_loop(
    http: reqwest::Client,
    base: String,
    key: String,
    user: usize,
    stop: Instant,
    give_up: Instant,
    client: Arc<Client>,
) -> Vec<Turn> {
    let mut turns = Vec::new();
    let mut k = 1;
    while Instant::now() < stop {
        let message = format!("turn {k} from user {user}");
        let body = json!({
            "user_id": format!("user-{user}"),
            "message": message,
            "idempotency_key": format!("u{user}-t{k}"),
        });
        let job_id = loop {
            assert!(
                Instant::now() < give_up,
                "user {user} turn {k}: never accepted"
            );
            let sent = http
                .post(format!("{base}/v1/chat"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 202 => {
                    let v: Value = r.json().await.unwrap();
                    break v["job_id"].as_str().unwrap().to_owned();
                }
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    panic!(
                        "user {user} turn {k}: {} {}",
                        r.status(),
                        r.text().await.unwrap()
                    )
                }
                _ => {
                    client.retried_requests.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let status = loop {
            assert!(
                Instant::now() < give_up,
                "user {user} turn {k}: job {job_id} never finished"
            );
            let got = http
                .get(format!("{base}/v1/chat/{job_id}?wait=5"))
                .bearer_auth(&key)
                .send()
                .await;
            let v: Option<Value> = match got {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    panic!("user {user} poll {job_id}: {}", r.status())
                }
                _ => None,
            };
            match v {
                Some(v) => {
                    let status = v["status"].as_str().unwrap().to_owned();
                    if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                        break status;
                    }
                }
                None => {
                    client.retried_requests.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        turns.push(Turn {
            user,
            k,
            job_id,
            status,
        });
        k += 1;
    }
    turns
}

/// Waits until `url` answers 200.
async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    let seconds: u64 = std::env::var("SKIPJACK_FAULTS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let run = Duration::from_secs(seconds);
    let users = 16;

    let pg = PrivatePg::start_new(&[]);
    let url = pg.url();
    db::migrate(&url).await.expect("migrate");
    let pool = pg.pool(4).await;
    let key = tenants::create_tenant_with_key(&pool, "faults", None)
        .await
        .unwrap()
        .secret()
        .to_owned();
    let upstream = start_upstream().await;
    let logs = tempfile_dir();

    let api_port = free_port();
    let base = format!("http://127.0.0.1:{api_port}");
    let mut api = spawn(
        env!("CARGO_BIN_EXE_api"),
        &[
            ("DATABASE_URL", url.clone()),
            ("SKIPJACK_API_ADDR", format!("127.0.0.1:{api_port}")),
        ],
        &logs.join("api.log"),
    );
    let worker_env = |port: u16| -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", url.clone()),
            ("SKIPJACK_WORKER_ADDR", format!("127.0.0.1:{port}")),
            ("SKIPJACK_LLM_PROVIDER", "openai".into()),
            ("SKIPJACK_LLM_BASE_URL", upstream.server.url.clone()),
            ("SKIPJACK_LLM_MODEL", "gpt-mock".into()),
            ("OPENAI_API_KEY", "sk-faults".into()),
            (
                "SKIPJACK_LLM_TIMEOUT_SECONDS",
                LLM_TIMEOUT_SECONDS.to_string(),
            ),
            ("SKIPJACK_RETRY_BASE_MS", "200".into()),
            ("SKIPJACK_RETRY_MAX_SECONDS", "2".into()),
            ("SKIPJACK_LEASE_SECONDS", "3".into()),
            ("SKIPJACK_MAX_ATTEMPTS", "6".into()),
            ("SKIPJACK_CONCURRENCY", "50".into()),
            ("SKIPJACK_POLL_INTERVAL_MS", "500".into()),
        ]
    };
    let mut workers = vec![
        WorkerProcess::start(worker_env(free_port()), logs.join("worker-0.log")),
        WorkerProcess::start(worker_env(free_port()), logs.join("worker-1.log")),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    wait_ready(&http, &format!("{base}/ready")).await;

    // The users.
    let began = Instant::now();
    let stop = began + run;
    let give_up = stop + Duration::from_secs(90);
    let client = Arc::new(Client::default());
    let user_tasks: Vec<_> = (0..users)
        .map(|u| {
            tokio::spawn(user_loop(
                http.clone(),
                base.clone(),
                key.clone(),
                u,
                stop,
                give_up,
                client.clone(),
            ))
        })
        .collect();

    // The faults, on a schedule scaled to the run.
    let kills = AtomicUsize::new(0);
    let at = |fraction: f64| began + run.mul_f64(fraction);
    let mut listener_backends_killed = 0i64;
    let mut restarted_postgres = false;
    let mut reader: Option<Reader> = None;
    let mut next_kill = began + Duration::from_secs(3);
    let mut stage = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now >= next_kill {
            let i = kills.fetch_add(1, Ordering::Relaxed) % workers.len();
            workers[i].kill_and_restart().await;
            next_kill = now + Duration::from_secs(4);
        }
        if stage == 0 && now >= at(0.2) {
            stage = 1;
            listener_backends_killed = scalar_i64(
                &pg.pool(1).await,
                "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity
                 WHERE application_name LIKE '%listener%' OR query ILIKE 'LISTEN%'",
            )
            .await;
        } else if stage == 1 && now >= at(0.4) {
            stage = 2;
            pg.crash();
            pg.start();
            restarted_postgres = true;
        } else if stage == 2 && now >= at(0.6) {
            stage = 3;
            reader = Some(hold_history_while_pruning(&pg, &url, &http, &base, &key, run).await);
        }
    }
    let mut turns = Vec::new();
    for task in user_tasks {
        turns.extend(task.await.unwrap());
    }

    // --- The integrity check. -------------------------------------------
    let pool = pg.pool(4).await;
    common::eventually(Duration::from_secs(60), "no job left live", || async {
        scalar_i64(&pool, "SELECT count(*) FROM jobs").await == 0
    })
    .await;
    let stored = scalar_i64(&pool, "SELECT count(*) FROM job_history").await;
    assert_eq!(stored as usize, turns.len(), "one job per turn");
    let duplicates = scalar_i64(
        &pool,
        "SELECT count(*) FROM (SELECT idempotency_key FROM job_history
                               GROUP BY 1 HAVING count(*) > 1) AS d",
    )
    .await;
    assert_eq!(duplicates, 0);
    let history: Vec<(String, String, i32, Option<String>, Value)> =
        sqlx::query_as("SELECT id::text, state::text, attempts, error, payload FROM job_history")
            .fetch_all(&pool)
            .await
            .unwrap();
    let by_id: HashMap<&str, &(String, String, i32, Option<String>, Value)> =
        history.iter().map(|h| (h.0.as_str(), h)).collect();
    for turn in &turns {
        let row = by_id[turn.job_id.as_str()];
        assert_eq!(row.1, turn.status, "the client saw the stored outcome");
        if row.1 != "completed" {
            assert!(
                row.3.as_deref().is_some_and(|e| !e.is_empty()),
                "failed with a reason: {row:?}"
            );
        }
    }
    // Every conversation: its completed turns, once each, in order, each
    // answered with the history it had (failed turns leave no messages).
    let mut per_user: BTreeMap<usize, Vec<&Turn>> = BTreeMap::new();
    for turn in &turns {
        per_user.entry(turn.user).or_default().push(turn);
    }
    for (user, mut user_turns) in per_user {
        user_turns.sort_by_key(|t| t.k);
        let messages: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.role::text, m.content FROM messages m
             JOIN conversations c ON c.id = m.conversation_id
             WHERE c.user_id = $1 ORDER BY m.seq",
        )
        .bind(format!("user-{user}"))
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut expected = Vec::new();
        for turn in user_turns.iter().filter(|t| t.status == "completed") {
            let message = format!("turn {} from user {user}", turn.k);
            let n = expected.len() + 1;
            expected.push(("user".to_owned(), message.clone()));
            expected.push(("assistant".to_owned(), format!("echo({n}): {message}")));
        }
        let got: Vec<(String, String)> = messages
            .into_iter()
            .map(|(role, content)| (role, content.trim_end_matches('\u{FFFD}').to_owned()))
            .collect();
        assert_eq!(got, expected, "user {user}'s conversation");
    }

    // --- The table. ---------------------------------------------------------
    let faults = upstream.faults.lock().unwrap().clone();
    let id_by_message: HashMap<String, &str> = history
        .iter()
        .map(|h| {
            (
                h.4["message"].as_str().unwrap_or_default().to_owned(),
                h.0.as_str(),
            )
        })
        .collect();
    let mut rows: BTreeMap<Fault, (usize, usize, i32, usize, usize)> = BTreeMap::new();
    for (message, seen) in &faults {
        let Some(id) = id_by_message.get(message) else {
            continue;
        };
        let (_, state, attempts, _, _) = by_id[id];
        let mut kinds: Vec<Fault> = seen.clone();
        kinds.sort();
        kinds.dedup();
        for fault in kinds {
            let row = rows.entry(fault).or_default();
            row.0 += seen.iter().filter(|f| **f == fault).count();
            row.1 += 1;
            row.2 = row.2.max(*attempts);
            if state == "completed" {
                row.3 += 1;
            } else {
                row.4 += 1;
            }
        }
    }
    let rescued = scalar_i64(
        &pool,
        "SELECT count(DISTINCT job_id) FROM job_events WHERE event = 'rescued'",
    )
    .await;
    let retried_ra0_too_fast = scalar_i64(
        &pool,
        "SELECT count(*) FROM job_events
         WHERE event = 'retried' AND next_run_at < created_at + interval '90 milliseconds'",
    )
    .await;
    let max_retry_delay = sqlx::query_scalar::<_, Option<f64>>(
        "SELECT max(extract(epoch FROM next_run_at - created_at))::float8 FROM job_events
         WHERE event = 'retried'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .unwrap_or(0.0);
    let completed = turns.iter().filter(|t| t.status == "completed").count();
    println!("\nfault suite: {seconds} s, {users} users, {} turns ({completed} completed, {} failed with a reason), {} requests retried by clients", turns.len(), turns.len() - completed, client.retried_requests.load(Ordering::Relaxed));
    println!("| fault | requests | jobs affected | most attempts | completed | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (fault, (requests, jobs, attempts, ok, failed)) in &rows {
        println!(
            "| {} | {requests} | {jobs} | {attempts} | {ok} | {failed} |",
            fault.name()
        );
    }
    let kills = kills.load(Ordering::Relaxed);
    println!("| worker SIGKILL ({kills}x, every 4 s) | | {rescued} rescued | | all | |");
    println!("| LISTEN backends terminated | {listener_backends_killed} | | | | |");
    println!(
        "| Postgres crash + restart | {} | | | | |",
        u8::from(restarted_postgres)
    );
    if let Some(r) = &reader {
        println!(
            "| job_history reader ({:.0} s) during a partition drop | prune took {:.2} s | {} jobs finished meanwhile | | {} reads, slowest {} ms | |",
            r.held_s, r.prune_s, r.finished_during, r.reads, r.slowest_read_ms
        );
    }
    println!("retry delays: none shorter than 90 ms ({retried_ra0_too_fast} were), longest {max_retry_delay:.2} s (cap 2 s)");

    // The faults were really injected, and what each must produce held.
    assert!(kills >= 2, "workers killed: {kills}");
    assert!(listener_backends_killed >= 1);
    assert!(restarted_postgres);
    let reader = reader.expect("the reader ran");
    assert!(reader.prune_ok, "housekeeping stalled behind the reader");
    assert!(
        reader.finished_during > 0,
        "jobs kept finishing behind the reader"
    );
    // Every read counted here was answered before the reader committed
    // (the probe is joined first): reads did not queue behind a prune
    // waiting for its lock. The slowest is printed above, not bounded.
    assert!(
        reader.reads > 0,
        "reads were answered while the reader held job_history"
    );
    assert_eq!(
        retried_ra0_too_fast, 0,
        "Retry-After: 0 never skipped the backoff"
    );
    assert!(
        max_retry_delay <= 2.5,
        "Retry-After: 86400 capped: {max_retry_delay}"
    );
    for fault in [
        Fault::NulInReply,
        Fault::ServerErrorWithNul,
        Fault::RetryAfterZero,
    ] {
        assert!(
            rows.get(&fault).is_some_and(|r| r.1 > 0),
            "{fault:?} injected"
        );
    }
    let partition_left = scalar_i64(
        &pool,
        "SELECT count(*) FROM pg_class WHERE relname = 'job_history_p20200101'",
    )
    .await;
    assert_eq!(
        partition_left, 0,
        "the old partition was dropped in the end"
    );

    for w in &mut workers {
        let _ = w.child.start_kill();
    }
    let _ = api.start_kill();
}

/// What happened while a reader held `job_history`.
struct Reader {
    held_s: f64,
    /// The prune finished while the reader still held `job_history`.
    prune_ok: bool,
    prune_s: f64,
    finished_during: i64,
    /// `GET /v1/chat/{id}` answers meanwhile, and the slowest of them.
    reads: u64,
    slowest_read_ms: u64,
}

/// Holds `job_history` open in a reader's transaction (as `pg_dump` would)
/// while `skipjack prune` runs housekeeping, which is due to drop a
/// partition, and a client reads a finished job every 50 ms; then lets go
/// and prunes again.
async fn hold_history_while_pruning(
    pg: &PrivatePg,
    url: &str,
    http: &reqwest::Client,
    base: &str,
    key: &str,
    run: Duration,
) -> Reader {
    let hold = (run / 5).clamp(Duration::from_secs(5), Duration::from_secs(30));
    let pool = pg.pool(2).await;
    let finished: String = sqlx::query_scalar("SELECT id::text FROM job_history LIMIT 1")
        .fetch_one(&pool)
        .await
        .expect("a finished job to read");
    // A partition past the retention, for housekeeping (ours, or a
    // restarted worker's) to drop while the reader holds job_history.
    sqlx::query(
        "CREATE TABLE job_history_p20200101 PARTITION OF job_history
         FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut reader = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM job_history")
        .execute(&mut *reader)
        .await
        .unwrap();
    let began = Instant::now();
    let finished_before = scalar_i64(&pool, "SELECT count(*) FROM job_history").await;
    let probe = {
        let (http, url, key) = (
            http.clone(),
            format!("{base}/v1/chat/{finished}"),
            key.to_owned(),
        );
        tokio::spawn(async move {
            let (mut reads, mut slowest) = (0u64, 0u64);
            while began.elapsed() < hold {
                let sent = Instant::now();
                let r = http.get(&url).bearer_auth(&key).send().await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    reads += 1;
                    slowest = slowest.max(sent.elapsed().as_millis() as u64);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (reads, slowest)
        })
    };
    // Housekeeping must give way to the reader, not queue everyone behind
    // its lock: the reader commits only after the prune has returned, so a
    // prune that waited for its lock would never return (the generous
    // guard below ends that wait).
    let prune = Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["prune"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let prune = tokio::time::timeout(Duration::from_secs(60).max(hold), prune).await;
    let prune_s = began.elapsed().as_secs_f64();
    let prune_ok = match &prune {
        Ok(Ok(output)) => {
            assert!(
                output.status.success(),
                "prune behind a reader: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            true
        }
        Ok(Err(e)) => panic!("cannot run skipjack prune: {e}"),
        Err(_) => false,
    };
    let (reads, slowest_read_ms) = probe.await.unwrap();
    let finished_during =
        scalar_i64(&pool, "SELECT count(*) FROM job_history").await - finished_before;
    reader.commit().await.unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["prune"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(again.status.success());
    Reader {
        held_s: began.elapsed().as_secs_f64(),
        prune_ok,
        prune_s,
        finished_during,
        reads,
        slowest_read_ms,
    }
}

/// A directory for the processes' logs, kept after the run.
fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("skipjack-faults-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
