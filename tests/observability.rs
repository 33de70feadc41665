//! Observability against a real Postgres and the files operators deploy:
//! the queue gauges (their query, its plan, the leader that refreshes them,
//! what the worker and the API export), structured logs, and every metric
//! name that a Grafana dashboard, a Prometheus rule, the prometheus-adapter
//! or KEDA queries, checked against what the code registers.

mod common;

use common::{eventually, TestDb};
use serde_json::json;
use serde_json::Value;
use skipjack::api::{Api, ApiConfig};
use skipjack::metrics::{self, render};
use skipjack::queue::gauges::{self, GaugesConfig};
use skipjack::queue::{self, NewJob, Priority, QueueStats};
use skipjack::worker::{NoopHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tests that set the process-wide queue gauges take this first (under
/// `cargo test` they share one process).
static GLOBAL_GAUGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE: Duration = Duration::from_secs(60);

fn p(n: i64) -> Priority {
    Priority::new(n).unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fast_gauges() -> GaugesConfig {
    GaugesConfig {
        interval: Duration::from_millis(50),
        ..GaugesConfig::default()
    }
}

async fn enqueue(pool: &PgPool, jobs: &[NewJob]) {
    let mut conn = pool.acquire().await.unwrap();
    for e in queue::enqueue_many(&mut conn, jobs).await.unwrap() {
        assert!(e.inserted);
    }
}

/// Seeds: priority 1 ready for a minute (3 jobs), priority 5 ready now (2),
/// priority 3 delayed an hour (1), a conversation of two turns at priority
/// 1 (the second blocked); then claims one job (a priority 5 one).
async fn seed_queue(pool: &PgPool) {
    let minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut jobs: Vec<NewJob> = (0..3)
        .map(|i| NewJob::new("test", json!({ "i": i })).with_run_at(minute_ago))
        .collect();
    jobs.extend((0..2).map(|i| NewJob::new("test", json!({ "j": i })).with_priority(p(5))));
    jobs.push(
        NewJob::new("test", json!({}))
            .with_priority(p(3))
            .with_delay(Duration::from_secs(3600)),
    );
    let conversation = skipjack::ids::ConversationId::new();
    jobs.extend((0..2).map(|turn| {
        NewJob::new("test", json!({ "turn": turn }))
            .with_conversation(conversation)
            .with_delay(Duration::from_secs(3600))
    }));
    enqueue(pool, &jobs).await;
    let claimed = queue::claim(pool, "w", 1, LEASE, &["test".to_owned()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].priority, p(5));
}

#[tokio::test]
async fn stats_count_queued_jobs_by_priority_and_age_the_oldest_ready_one() {
    let db = TestDb::new().await;
    let empty = queue::stats(&db.pool).await.unwrap();
    assert!(empty.depth.is_empty());
    assert_eq!(
        (empty.processing, empty.oldest_queued_age_seconds),
        (0, 0.0)
    );

    seed_queue(&db.pool).await;
    let stats = queue::stats(&db.pool).await.unwrap();
    // Ready, delayed and blocked jobs all count as queued.
    assert_eq!(stats.depth, BTreeMap::from([(1, 5), (3, 1), (5, 1)]));
    assert_eq!(stats.total(), 7);
    assert_eq!(stats.processing, 1);
    // The oldest ready job is a priority 1 job due a minute ago; the
    // delayed ones are not ready and do not count.
    assert!(
        (59.0..120.0).contains(&stats.oldest_queued_age_seconds),
        "{}",
        stats.oldest_queued_age_seconds
    );
}

#[tokio::test]
async fn stats_plan_reads_indexes_only() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..2000)
        .map(|i| NewJob::new("test", json!({ "i": i })).with_priority(p(1 + i % 3)))
        .collect();
    for chunk in jobs.chunks(500) {
        enqueue(&db.pool, chunk).await;
    }
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    let statement = std::fs::read_to_string(repo().join("sql/queue/stats.sql")).unwrap();
    let explain = |setting: Option<&'static str>| {
        let pool = db.pool.clone();
        let statement = statement.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            if let Some(setting) = setting {
                sqlx::raw_sql(setting).execute(&mut *tx).await.unwrap();
            }
            let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {statement}"))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            plan.join("\n")
        }
    };
    // The oldest ready job is one probe of jobs_fair_claim per tenant queue,
    // and the processing count reads jobs_lease, whatever the table's size.
    let plan = explain(None).await;
    assert!(
        plan.contains("using jobs_fair_claim on jobs") && plan.contains("(priority = f.priority)"),
        "the oldest ready job must be a probe of jobs_fair_claim per queue:\n{plan}"
    );
    assert!(plan.contains("using jobs_lease"), "{plan}");
    // The depth count can be answered by the small partial index alone. At
    // 2,000 jobs the planner may prefer reading the table (or a bitmap scan,
    // while concurrent sessions keep VACUUM from setting the visibility
    // map); at a million it takes the index: BENCHMARKS.md, "Queue gauges".
    let plan = explain(Some(
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off",
    ))
    .await;
    assert!(
        plan.contains("Index Only Scan using jobs_queued_tenant_priority"),
        "depth must be countable from the partial index:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

/// What one refresher's sink saw last.
#[derive(Default)]
struct Seen {
    leading: bool,
    total: i64,
    readings: usize,
}

fn recording_sink(seen: Arc<Mutex<Seen>>) -> impl FnMut(Option<&QueueStats>) + Send + 'static {
    move |stats| {
        let mut seen = seen.lock().unwrap();
        seen.leading = stats.is_some();
        if let Some(stats) = stats {
            seen.total = stats.total();
            seen.readings += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_leads_the_gauges_and_another_takes_over() {
    let db = TestDb::new().await;
    seed_queue(&db.pool).await;
    // Two "processes", each with its own pool.
    let seen: Vec<Arc<Mutex<Seen>>> = (0..2).map(|_| Arc::default()).collect();
    let stops: Vec<CancellationToken> = (0..2).map(|_| CancellationToken::new()).collect();
    let mut handles = Vec::new();
    for (seen, stop) in seen.iter().zip(&stops) {
        let pool = db.new_pool(3).await;
        handles.push(Some(gauges::spawn_with(
            pool,
            fast_gauges(),
            stop.clone(),
            recording_sink(seen.clone()),
        )));
    }
    let leaders = || seen.iter().filter(|s| s.lock().unwrap().leading).count();
    eventually(Duration::from_secs(10), "a leader reads the queue", || {
        let ready = leaders() == 1 && seen.iter().any(|s| s.lock().unwrap().readings >= 3);
        async move { ready }
    })
    .await;
    let leader = seen.iter().position(|s| s.lock().unwrap().leading).unwrap();
    let follower = 1 - leader;
    assert_eq!(seen[leader].lock().unwrap().total, 7);
    // The follower never read anything: one query for both.
    assert_eq!(seen[follower].lock().unwrap().readings, 0);
    let locks = common::count(
        &db.pool,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await;
    assert_eq!(locks, 1);

    // The leader stops (or dies): the other takes over within an interval.
    stops[leader].cancel();
    handles[leader].take().unwrap().await.unwrap();
    assert!(!seen[leader].lock().unwrap().leading);
    eventually(Duration::from_secs(10), "the follower takes over", || {
        let s = seen[follower].lock().unwrap();
        let ok = s.leading && s.total == 7;
        async move { ok }
    })
    .await;
    stops[follower].cancel();
    handles[follower].take().unwrap().await.unwrap();
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn gauges_export_every_priority_and_nothing_when_not_leading() {
    let _guard = GLOBAL_GAUGES.lock().await;
    let stats = QueueStats {
        depth: BTreeMap::from([(1, 5), (5, 1)]),
        processing: 2,
        oldest_queued_age_seconds: 61.5,
        tenant_waits: vec![("acme".to_owned(), 61.5), ("globex".to_owned(), 3.0)],
    };
    gauges::export(Some(&stats));
    let text = render();
    assert_eq!(
        sample(
            &text,
            r#"skipjack_tenant_oldest_queued_age_seconds{tenant="globex"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"skipjack_queue_depth{priority="1"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, r#"skipjack_queue_depth{priority="5"}"#),
        Some(1.0)
    );
    // Empty priorities are zeros, not missing series.
    for priority in [2, 3, 4, 6, 7, 8, 9, 10] {
        let series = format!(r#"skipjack_queue_depth{{priority="{priority}"}}"#);
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(sample(&text, "skipjack_jobs_processing"), Some(2.0));
    assert_eq!(
        sample(&text, "skipjack_queue_oldest_age_seconds"),
        Some(61.5)
    );
    assert_eq!(sample(&text, "skipjack_queue_stats_leader"), Some(1.0));
    let updated = sample(&text, "skipjack_queue_stats_updated_timestamp_seconds").unwrap();
    assert!((updated - chrono::Utc::now().timestamp() as f64).abs() < 60.0);

    gauges::export(None);
    let text = render();
    for name in [
        metrics::QUEUE_DEPTH,
        metrics::JOBS_PROCESSING,
        metrics::QUEUE_OLDEST_AGE_SECONDS,
        metrics::QUEUE_STATS_UPDATED_TIMESTAMP_SECONDS,
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(name)),
            "{name} exported by a non-leader"
        );
    }
    assert_eq!(sample(&text, "skipjack_queue_stats_leader"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_api_each_export_the_queue_gauges() {
    let _guard = GLOBAL_GAUGES.lock().await;
    let db = TestDb::new().await;
    // Delayed, so the worker leaves them queued; priority 7 is theirs alone.
    let jobs: Vec<NewJob> = (0..4)
        .map(|i| {
            NewJob::new("noop", json!({ "i": i }))
                .with_priority(p(7))
                .with_delay(Duration::from_secs(3600))
        })
        .collect();
    enqueue(&db.pool, &jobs).await;
    let depth_is = |n: f64| {
        let ok = sample(&render(), r#"skipjack_queue_depth{priority="7"}"#) == Some(n);
        async move { ok }
    };

    let stop = CancellationToken::new();
    let worker = Worker::builder(db.pool.clone())
        .register(NoopHandler)
        .config(WorkerConfig {
            queue_gauges: Some(fast_gauges()),
            maintenance: None,
            ..WorkerConfig::default()
        })
        .build()
        .unwrap();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    eventually(
        Duration::from_secs(10),
        "the worker exports depth 4",
        || depth_is(4.0),
    )
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    // A stopped worker exports nothing of the queue.
    assert!(!depth_is(4.0).await);

    let stop = CancellationToken::new();
    let api = Api::start(
        db.pool.clone(),
        ApiConfig {
            queue_gauges: Some(fast_gauges()),
            ..ApiConfig::default()
        },
        stop.clone(),
    );
    enqueue(
        &db.pool,
        &[NewJob::new("noop", json!({})).with_priority(p(7))],
    )
    .await;
    eventually(Duration::from_secs(10), "the API exports depth 5", || {
        depth_is(5.0)
    })
    .await;
    stop.cancel();
    api.stop().await;
}

// ---------------------------------------------------------------------------
// Structured logs.

/// The worker binary, run as operators run it (JSON logs to stderr,
/// `RUST_LOG` as the filter), answers one chat turn; its log lines carry
/// the job, conversation, tenant, attempt and worker as span fields.
#[tokio::test]
async fn worker_logs_json_lines_with_the_job_span() {
    let db = TestDb::new().await;
    let tenant = skipjack::tenants::create_tenant(&db.pool, "acme", None)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let conversation = skipjack::chat::store::default_conversation(&mut conn, tenant, "alice")
        .await
        .unwrap();
    let payload = serde_json::to_value(skipjack::chat::ChatPayload {
        user_id: "alice".into(),
        message: "hello".into(),
        metadata: None,
        stream: false,
    })
    .unwrap();
    let job = queue::enqueue(
        &mut conn,
        &NewJob::new(skipjack::chat::CHAT_KIND, payload)
            .with_tenant(tenant)
            .with_conversation(conversation),
    )
    .await
    .unwrap()
    .id;
    drop(conn);

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("DATABASE_URL", &db.url)
        .env("SKIPJACK_WORKER_ADDR", "127.0.0.1:0")
        .env("SKIPJACK_WORKER_ID", "log-test-worker")
        .env("SKIPJACK_SIMULATED_LATENCY_MS", "1")
        .env("SKIPJACK_LOG_FORMAT", "json")
        // Info everywhere, debug for the worker runtime: the per-attempt
        // line exists only if RUST_LOG is honoured.
        .env("RUST_LOG", "info,skipjack::worker=debug")
        .env_remove("REDIS_URL")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the worker binary");
    eventually(Duration::from_secs(30), "the worker completes the job", || {
        let pool = db.pool.clone();
        async move {
            common::count(
                &pool,
                &format!("SELECT count(*) FROM job_history WHERE id = '{job}' AND state = 'completed'"),
            )
            .await
                == 1
        }
    })
    .await;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "attempt finished")
        .unwrap_or_else(|| panic!("no debug line for the attempt in:\n{stderr}"));
    assert_eq!(attempt["level"], "DEBUG");
    assert_eq!(attempt["outcome"], "completed");
    let span = &attempt["span"];
    assert_eq!(span["name"], "job");
    assert_eq!(span["job_id"], job.to_string());
    assert_eq!(span["conversation_id"], conversation.to_string());
    assert_eq!(span["tenant_id"], tenant.to_string());
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["worker"], "log-test-worker");
    // RUST_LOG keeps other modules at info: no debug line from elsewhere.
    assert!(lines
        .iter()
        .filter(|l| l["level"] == "DEBUG")
        .all(|l| l["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("skipjack::worker")));
}

// ---------------------------------------------------------------------------
// What a fresh API and a fresh worker export, as shipped (the binaries).

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of a 2xx answer to GET `url`, or `None`.
async fn get_ok(url: &str) -> Option<String> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The first successful scrape of `url`: polled until the process
/// answers, and the first answer is the one kept.
async fn first_scrape(url: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(text) = get_ok(url).await {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Series name → the label sets rendered for it.
fn scraped_series(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut series: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map_or("", |(labels, _)| labels);
        series
            .entry(line[..end].to_owned())
            .or_default()
            .push(labels.to_owned());
    }
    series
}

/// A sample's value in a scrape: `name{labels}` exactly as rendered.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Every metric name the dashboards and the alert rules read.
fn names_operators_query() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let dashboard: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for q in dashboard_queries(&dashboard) {
                names.extend(promql_metric_names(&q));
            }
        }
    }
    let rules = yaml_file(&repo().join("prometheus/alerts.yml"));
    for expr in strings_of(&rules, "expr") {
        names.extend(promql_metric_names(&expr));
    }
    // Prometheus's own.
    names.remove("up");
    names
}

/// The queue gauges: exported by the one process that leads their refresh,
/// once it has refreshed them (src/metrics.rs, "The queue gauges").
const LEADER_ONLY: &[&str] = &[
    metrics::QUEUE_DEPTH,
    metrics::QUEUE_OLDEST_AGE_SECONDS,
    metrics::JOBS_PROCESSING,
    metrics::QUEUE_STATS_UPDATED_TIMESTAMP_SECONDS,
];

/// The provider budget series: labelled by endpoint and model, exported by
/// workers configured with `SKIPJACK_LLM_RPM` / `SKIPJACK_LLM_TPM` only
/// (from start-up on; tests/llm_budget.rs runs such workers).
const BUDGET_ONLY: &[&str] = &[metrics::LLM_BUDGET_USED_TOTAL, metrics::LLM_BUDGET_LIMIT];

/// Labelled by the tenants waiting longest: no series while no tenant has a
/// ready job waiting (a fresh queue); the gauges test exports some.
const WAITING_ONLY: &[&str] = &[metrics::TENANT_OLDEST_AGE_SECONDS];

/// The API and worker binaries, started fresh, export from their first
/// scrape every series the dashboard and the alert rules read (the queue
/// gauges from the leader once it has refreshed them), and at least one
/// series of every labelled counter and histogram, at 0. The API's metrics
/// are on SKIPJACK_METRICS_ADDR and not on its public port. A chat turn then
/// moves the tokens and the estimated cost of the configured provider and
/// model by the configured price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_api_and_worker_export_every_series_operators_query() {
    let db = TestDb::new().await;
    let (api_port, metrics_port, worker_port) = (free_port(), free_port(), free_port());
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .env("DATABASE_URL", &db.url)
        .env("SKIPJACK_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("SKIPJACK_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the api binary");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("DATABASE_URL", &db.url)
        .env("SKIPJACK_WORKER_ADDR", format!("127.0.0.1:{worker_port}"))
        .env("SKIPJACK_SIMULATED_LATENCY_MS", "1")
        .env("SKIPJACK_LLM_PRICE_PER_MTOK", "simulated=2/10,other=1/1")
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .env_remove("SKIPJACK_LLM_PROVIDER")
        .env_remove("SKIPJACK_LLM_MODEL")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the worker binary");

    let api_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let worker_metrics = format!("http://127.0.0.1:{worker_port}/metrics");
    let api_first = first_scrape(&api_metrics).await;
    let worker_first = first_scrape(&worker_metrics).await;
    let mut scraped = scraped_series(&api_first);
    for (name, labels) in scraped_series(&worker_first) {
        scraped.entry(name).or_default().extend(labels);
    }

    let queried = names_operators_query();
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !scraped.contains_key(*n))
        .filter(|n| !LEADER_ONLY.iter().any(|l| n.starts_with(l)))
        .filter(|n| !BUDGET_ONLY.contains(&n.as_str()))
        .filter(|n| !WAITING_ONLY.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "a fresh API and worker do not export {missing:?}"
    );
    for e in metrics::exported() {
        if e.labels.is_empty()
            || e.kind == metrics::MetricKind::Gauge
            || BUDGET_ONLY.contains(&e.name.as_str())
        {
            continue;
        }
        let name = match e.kind {
            metrics::MetricKind::Histogram => format!("{}_count", e.name),
            _ => e.name.clone(),
        };
        assert!(
            scraped.contains_key(&name),
            "no series of {name} at start-up"
        );
    }
    // Some of the label sets, at 0.
    for (text, series) in [
        (
            &api_first,
            r#"skipjack_http_requests_total{method="POST",route="/v1/chat",status="202"}"#,
        ),
        (
            &api_first,
            r#"skipjack_http_requests_total{method="GET",route="/v1/queue",status="401"}"#,
        ),
        (&api_first, r#"skipjack_jobs_enqueued_total{priority="10"}"#),
        (
            &api_first,
            r#"skipjack_backpressure_rejections_total{scope="tenant"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_jobs_finished_total{outcome="failed"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_jobs_rescued_total{result="failed"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_llm_errors_total{class="timeout"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_cache_requests_total{result="hit"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_job_run_seconds_count{kind="chat"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_job_wait_seconds_count{priority="1"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_llm_tokens_total{direction="output",model="simulated",provider="simulated"}"#,
        ),
        (
            &worker_first,
            r#"skipjack_llm_cost_usd_total{model="simulated",provider="simulated"}"#,
        ),
    ] {
        assert_eq!(value_of(text, series), Some(0.0), "{series} in\n{text}");
    }

    // The leader's gauges appear once it has refreshed them.
    eventually(Duration::from_secs(30), "the queue gauges", || {
        let (a, w, queried) = (api_metrics.clone(), worker_metrics.clone(), queried.clone());
        async move {
            let text = format!(
                "{}{}",
                get_ok(&a).await.unwrap_or_default(),
                get_ok(&w).await.unwrap_or_default()
            );
            let names = scraped_series(&text);
            queried
                .iter()
                .filter(|n| !BUDGET_ONLY.contains(&n.as_str()))
                .filter(|n| !WAITING_ONLY.contains(&n.as_str()))
                .all(|n| names.contains_key(n))
        }
    })
    .await;

    // The public port serves the API and the probes, not the metrics.
    let public = format!("http://127.0.0.1:{api_port}");
    let answer = reqwest::get(format!("{public}/metrics")).await.unwrap();
    assert_eq!(answer.status(), 404);
    assert!(get_ok(&format!("{public}/health")).await.is_some());

    // A chat turn: tokens and cost under the configured provider and model.
    let key = skipjack::tenants::create_tenant_with_key(&db.pool, "acme", None)
        .await
        .unwrap();
    let submitted: Value = reqwest::Client::new()
        .post(format!("{public}/v1/chat"))
        .bearer_auth(key.secret())
        .json(&json!({"user_id": "alice", "message": "how much does this cost?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = submitted["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the turn completes", || {
        let pool = db.pool.clone();
        let job = job.clone();
        async move {
            common::count(
                &pool,
                &format!(
                    "SELECT count(*) FROM job_history WHERE id = '{job}' AND state = 'completed'"
                ),
            )
            .await
                == 1
        }
    })
    .await;
    let (input, output): (i32, i32) = sqlx::query_as(&format!(
        "SELECT input_tokens, output_tokens FROM job_history WHERE id = '{job}'"
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let text = get_ok(&worker_metrics).await.unwrap();
    let labels = r#"model="simulated",provider="simulated""#;
    assert_eq!(
        value_of(
            &text,
            &format!(r#"skipjack_llm_tokens_total{{direction="input",{labels}}}"#)
        ),
        Some(f64::from(input))
    );
    assert_eq!(
        value_of(
            &text,
            &format!(r#"skipjack_llm_tokens_total{{direction="output",{labels}}}"#)
        ),
        Some(f64::from(output))
    );
    let cost = value_of(&text, &format!("skipjack_llm_cost_usd_total{{{labels}}}")).unwrap();
    let expected = (f64::from(input) * 2.0 + f64::from(output) * 10.0) / 1e6;
    assert!(expected > 0.0);
    assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");

    // `skipjack health URL`: 0 on a 2xx, 1 otherwise (the containers'
    // health check).
    let health = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
            .args(["health", &url, "--timeout-seconds", "5"])
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .unwrap()
            .code()
    };
    assert_eq!(health(format!("{public}/ready")).await, Some(0));
    assert_eq!(
        health(format!("http://127.0.0.1:{worker_port}/health")).await,
        Some(0)
    );
    assert_eq!(health(format!("{public}/no-such-route")).await, Some(1));
    assert_eq!(
        health(format!("http://127.0.0.1:{}/health", free_port())).await,
        Some(1)
    );
    // Without a URL it finds the process from SKIPJACK_API_ADDR or
    // SKIPJACK_WORKER_ADDR, as the image's HEALTHCHECK does.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .arg("health")
        .env("SKIPJACK_API_ADDR", format!("0.0.0.0:{}", free_port()))
        .env("SKIPJACK_WORKER_ADDR", format!("0.0.0.0:{worker_port}"))
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .arg("health")
        .env("SKIPJACK_API_ADDR", format!("0.0.0.0:{}", free_port()))
        .env("SKIPJACK_WORKER_ADDR", format!("0.0.0.0:{}", free_port()))
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));

    api.start_kill().unwrap();
    worker.start_kill().unwrap();
    let _ = api.wait().await;
    let _ = worker.wait().await;
}

/// Cargo.toml's `rust-version` is one every locked dependency accepts: no
/// lower than the highest `rust-version` among them (those built on this
/// host) (clippy's
/// incompatible_msrv lint then checks skipjack's own code against it).
#[test]
fn rust_version_is_one_the_locked_dependencies_accept() {
    // This host's dependencies (the others' sources may not be downloaded).
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    // "1.89" is "1.89.0".
    let version = |v: &str| -> Vec<u64> {
        let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
        parts.resize(3, 0);
        parts
    };
    let mut ours = None;
    let mut needed = (vec![0], String::new());
    for package in meta["packages"].as_array().unwrap() {
        let Some(rv) = package["rust_version"].as_str() else {
            continue;
        };
        if package["name"] == "skipjack" {
            ours = Some(version(rv));
        } else if version(rv) > needed.0 {
            needed = (
                version(rv),
                format!("{} {}", package["name"], package["version"]),
            );
        }
    }
    let ours = ours.expect("Cargo.toml declares a rust-version");
    assert!(
        ours >= needed.0,
        "rust-version {ours:?} is older than {} needs ({:?})",
        needed.1,
        needed.0
    );
}

/// scripts/lib.sh's URL helpers (which database, the maintenance URL) on
/// URLs whose user or host is named like the database, with query
/// parameters, without a database: scripts/lib_test.sh.
#[test]
fn script_url_helpers_touch_only_the_database_part() {
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/lib_test.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every binary that needs a database defaults to the URL scripts/run.sh
/// sets up, so `skipjack tenants create NAME` works in a second terminal
/// with no environment.
#[test]
fn binaries_default_to_the_database_run_sh_uses() {
    let run = std::fs::read_to_string(repo().join("scripts/run.sh")).unwrap();
    let default = skipjack::db::DEFAULT_DATABASE_URL;
    assert!(
        run.contains(&format!("DATABASE_URL:-{default}}}")),
        "scripts/run.sh does not default to {default}"
    );
    for (exe, args) in [
        (env!("CARGO_BIN_EXE_api"), vec![]),
        (env!("CARGO_BIN_EXE_worker"), vec![]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["migrate"]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["stats"]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["prune"]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["tenants", "create"]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["keys", "create"]),
        (env!("CARGO_BIN_EXE_skipjack"), vec!["keys", "revoke"]),
    ] {
        let out = std::process::Command::new(exe)
            .args(&args)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("[default: {default}]")),
            "{exe} {args:?} --help: {help}"
        );
    }
    // And a command run with no DATABASE_URL goes there instead of asking
    // for the argument (a read-only one: whatever that database holds, it
    // may fail to connect, never to parse its arguments).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .arg("stats")
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("--database-url"), "{stderr}");
    assert_ne!(out.status.code(), Some(2), "a usage error: {stderr}");
}

// ---------------------------------------------------------------------------
// Metric names in the dashboards, alert rules and autoscaling queries.

/// Every series name a query may name: the registered metrics (histograms
/// as their `_bucket`, `_sum` and `_count` series) and Prometheus's own
/// `up`.
fn exported_series() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = metrics::exported()
        .iter()
        .flat_map(|e| e.series_names())
        .collect();
    names.insert("up".to_owned());
    names
}

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    // Aggregations, which may be followed by `by (…)` before their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads. Skips strings, label
/// matchers `{…}`, ranges `[…]`, label lists after `by`/`on`/…, function
/// and aggregation names, numbers, Grafana variables (`$__rate_interval`)
/// and prometheus-adapter templates (`<<.LabelMatchers>>`).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_string = |i: usize| -> usize {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let skip_group = |i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => {
                    j = skip_string(j);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        j
    };
    let next_non_space = |mut j: usize| -> Option<char> {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        chars.get(j).copied()
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '<' && chars.get(i + 1) == Some(&'<') {
            while i < chars.len() && !(chars[i] == '>' && chars.get(i + 1) == Some(&'>')) {
                i += 1;
            }
            i += 2;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '{', '}');
            }
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (1e-9, 0.95) or a duration (5m).
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '-' && chars[i - 1] == 'e')
            {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&'(') {
                    i = skip_group(j, '(', ')');
                }
            } else if PROMQL_KEYWORDS.contains(&lower.as_str()) || next_non_space(i) == Some('(') {
                // An operator, or a function or aggregation name.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL query in a Grafana dashboard: panel targets (nested rows
/// included) and templating queries (`label_values(SELECTOR, LABEL)` as its
/// selector; a datasource variable's `query` is a plugin type, skipped).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                let datasource_variable = map.get("type") == Some(&json!("datasource"));
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("query", _) if datasource_variable => {}
                        ("query" | "definition", Value::String(s))
                            if s.starts_with("label_values(") =>
                        {
                            let inner = &s["label_values(".len()..s.len() - 1];
                            let selector = inner.rsplit_once(',').map_or(inner, |(sel, _)| sel);
                            out.push(selector.trim().to_owned());
                        }
                        ("query", Value::Object(q))
                            if q.get("query")
                                .and_then(Value::as_str)
                                .is_some_and(|s| s.starts_with("label_values(")) =>
                        {
                            walk(&json!({"query": q["query"]}), out);
                        }
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::Object(q)) => {
                            if let Some(Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out
}

/// The metric names of `queries` that the code does not export, as
/// `(query, name)`.
fn unknown_metrics(queries: &[String]) -> Vec<(String, String)> {
    let exported = exported_series();
    queries
        .iter()
        .flat_map(|q| {
            promql_metric_names(q)
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(move |n| (q.clone(), n))
        })
        .collect()
}

fn yaml_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of every `key` in `v`, at any depth.
fn values_of<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key {
                    out.push(child);
                }
                values_of(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| values_of(c, key, out)),
        _ => {}
    }
}

fn strings_of(docs: &[Value], key: &str) -> Vec<String> {
    let mut found = Vec::new();
    for doc in docs {
        values_of(doc, key, &mut found);
    }
    found
        .into_iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{key} is not a string: {v}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn promql_names_are_found_and_everything_else_skipped() {
    let q = r#"histogram_quantile(0.95, sum by (le, priority) (rate(skipjack_job_wait_seconds_bucket{route="/v1/chat", x=~"a|b"}[$__rate_interval])))
        / on() group_left(instance) (max(skipjack_jobs_processing{<<.LabelMatchers>>}) or vector(1e-9)) > bool 0.5
        and ignoring(job) time() - max(skipjack_queue_stats_updated_timestamp_seconds offset 5m) > 60"#;
    assert_eq!(
        promql_metric_names(q),
        BTreeSet::from([
            "skipjack_job_wait_seconds_bucket".to_owned(),
            "skipjack_jobs_processing".to_owned(),
            "skipjack_queue_stats_updated_timestamp_seconds".to_owned(),
        ])
    );
    assert_eq!(
        promql_metric_names("sum(rate(skipjack_jobs_finished_total[5m])) by (outcome)"),
        BTreeSet::from(["skipjack_jobs_finished_total".to_owned()])
    );
}

#[test]
fn a_dashboard_naming_an_unexported_metric_fails_the_check() {
    let dashboard = json!({"panels": [{"type": "row", "panels": [{"targets": [
        {"expr": "sum(rate(skipjack_jobs_finished_total[5m]))"},
        {"expr": "rate(skipjack_jobs_exploded_total[5m])"},
        // A histogram is stored as its _bucket/_sum/_count series only.
        {"expr": "skipjack_job_wait_seconds"},
    ]}]}]});
    let unknown: Vec<String> = unknown_metrics(&dashboard_queries(&dashboard))
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert_eq!(
        unknown,
        ["skipjack_jobs_exploded_total", "skipjack_job_wait_seconds"]
    );
}

#[test]
fn every_dashboard_query_names_exported_metrics() {
    let dir = repo().join("grafana/dashboards");
    let mut dashboards = 0;
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let queries = dashboard_queries(&dashboard);
        assert!(queries.len() >= 20, "{}: too few queries", path.display());
        let unknown = unknown_metrics(&queries);
        assert!(
            unknown.is_empty(),
            "{} names metrics the code does not export: {unknown:#?}",
            path.display()
        );
        seen.extend(queries.iter().flat_map(|q| promql_metric_names(q)));
        // Every panel query reads the datasource the dashboard's variable
        // picks (the provisioned one by default, any other Prometheus on
        // another Grafana).
        let mut datasources = Vec::new();
        values_of(&dashboard, "datasource", &mut datasources);
        assert!(datasources.iter().all(|d| d["uid"] == "${datasource}"));
        let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        assert_eq!(variables["datasource"]["type"], "datasource");
        assert_eq!(variables["datasource"]["query"], "prometheus");
        for name in ["namespace", "instance"] {
            let v = variables[name];
            assert_eq!(v["type"], "query", "{name}");
            assert_eq!(v["includeAll"], true, "{name}");
            // All matches series without the label too (docker compose
            // has no namespace).
            assert_eq!(v["allValue"], ".*", "{name}");
        }
        // Every selector is narrowed by the variables: the namespace
        // everywhere, the instance except for the whole-queue gauges.
        let whole_queue = [
            metrics::QUEUE_DEPTH,
            metrics::QUEUE_OLDEST_AGE_SECONDS,
            metrics::JOBS_PROCESSING,
            metrics::QUEUE_STATS_UPDATED_TIMESTAMP_SECONDS,
            metrics::QUEUE_STATS_LEADER,
        ];
        for q in &dashboard_queries(&dashboard["panels"]) {
            for name in promql_metric_names(q) {
                let selector = format!("{name}{{namespace=~\"$namespace\"");
                assert!(
                    q.contains(&selector),
                    "{q}: {name} is not narrowed to $namespace"
                );
                let instance = format!("{selector}, instance=~\"$instance\"");
                assert_eq!(
                    q.contains(&instance),
                    !whole_queue.contains(&name.as_str()),
                    "{q}: {name} and $instance"
                );
            }
            assert!(
                !q.contains("job="),
                "{q}: the job label differs between set-ups"
            );
        }
        // The LLM panels: tokens and estimated cost by provider and model.
        for (metric, grouping) in [
            (metrics::LLM_TOKENS_TOTAL, "by (provider, model, direction)"),
            (metrics::LLM_COST_USD_TOTAL, "by (provider, model)"),
        ] {
            assert!(
                queries
                    .iter()
                    .any(|q| q.contains(metric) && q.contains(grouping)),
                "no panel shows {metric} {grouping}"
            );
        }
    }
    assert!(dashboards >= 1);
    // What the issue asks the dashboard to show.
    for needed in [
        "skipjack_queue_depth",
        "skipjack_queue_oldest_age_seconds",
        "skipjack_jobs_finished_total",
        "skipjack_job_wait_seconds_bucket",
        "skipjack_job_run_seconds_bucket",
        "skipjack_jobs_retried_total",
        "skipjack_jobs_rescued_total",
        "skipjack_worker_slots_busy",
        "skipjack_worker_slots_total",
        "skipjack_llm_tokens_total",
        "skipjack_llm_cost_usd_total",
        "skipjack_http_requests_total",
        "skipjack_http_request_seconds_bucket",
        "skipjack_backpressure_rejections_total",
    ] {
        assert!(seen.contains(needed), "no dashboard panel shows {needed}");
    }
}

#[test]
fn alert_rules_and_autoscaling_queries_name_exported_metrics() {
    let rules = yaml_file(&repo().join("prometheus/alerts.yml"));
    let exprs = strings_of(&rules, "expr");
    let alerts = strings_of(&rules, "alert");
    assert!(exprs.len() >= 7, "{exprs:?}");
    for needed in [
        "SkipjackQueueDepthHigh",
        "SkipjackOldestQueuedJobTooOld",
        "SkipjackErrorRateHigh",
        "SkipjackNoWorkerReady",
        "SkipjackRescuesSpiking",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "no alert {needed}");
    }
    // The rule tests' inputs must be real series too, or they test nothing.
    let tests = yaml_file(&repo().join("prometheus/alerts.test.yml"));
    let mut queries = exprs;
    queries.extend(strings_of(&tests, "expr"));
    queries.extend(strings_of(&tests, "series"));
    // The autoscalers' queries: prometheus-adapter and KEDA.
    let adapter = yaml_file(&repo().join("deploy/hpa/prometheus-adapter-values.yaml"));
    queries.extend(strings_of(&adapter, "metricsQuery"));
    queries.extend(strings_of(&adapter, "seriesQuery"));
    let keda = yaml_file(&repo().join("deploy/keda/worker-scaledobject.yaml"));
    queries.extend(strings_of(&keda, "query"));
    let unknown = unknown_metrics(&queries);
    assert!(
        unknown.is_empty(),
        "queries name metrics the code does not export: {unknown:#?}"
    );
    // Every alert has a runbook section, linked absolutely (Alertmanager
    // and Grafana show the link outside any checkout), all under one base
    // an operator changes in one substitution.
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let mut bases = BTreeSet::new();
    for rule in rules[0]["groups"][0]["rules"].as_array().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        assert!(
            runbook.contains(&format!("### {alert}")),
            "docs/runbook.md has no `### {alert}` section"
        );
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let anchor = format!("/runbook.md#{}", alert.to_lowercase());
        assert!(
            url.starts_with("https://"),
            "{alert}: {url} is not absolute"
        );
        let base = url
            .strip_suffix(&anchor)
            .unwrap_or_else(|| panic!("{alert}: {url} does not end in {anchor}"));
        bases.insert(base.to_owned());
        // No rule depends on the job label, which a PodMonitor sets to
        // NAMESPACE/NAME.
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            !expr.contains("job=") && !expr.contains("job!") && !expr.contains("job,"),
            "{alert} selects on the job label: {expr}"
        );
    }
    assert_eq!(bases.len(), 1, "{bases:?}");
    let base = bases.into_iter().next().unwrap();
    let header = std::fs::read_to_string(repo().join("prometheus/alerts.yml")).unwrap();
    assert!(
        header.contains(&format!("{base}/")),
        "alerts.yml's header must name the runbook base {base} to change"
    );
}

/// The PrometheusRule for the Prometheus operator holds exactly the rules
/// of prometheus/alerts.yml (it is generated from it), so the two cannot
/// drift.
#[test]
fn prometheus_rule_object_matches_the_alert_rules() {
    let rules = yaml_file(&repo().join("prometheus/alerts.yml")).remove(0);
    let object = yaml_file(&repo().join("deploy/monitoring/prometheusrule.yaml")).remove(0);
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["metadata"]["namespace"], "skipjack");
    assert_eq!(
        object["spec"]["groups"], rules["groups"],
        "deploy/monitoring/prometheusrule.yaml differs from prometheus/alerts.yml: run python3 deploy/validate.py --write-rules"
    );
    let podmonitor = yaml_file(&repo().join("deploy/monitoring/podmonitor.yaml")).remove(0);
    assert_eq!(podmonitor["kind"], "PodMonitor");
    assert_eq!(
        podmonitor["spec"]["podMetricsEndpoints"][0]["port"],
        "metrics"
    );
}

// ---------------------------------------------------------------------------
// docker-compose.yml, the Dockerfile, the scrape configs and the Kubernetes
// manifests: references between them, checked offline (no Docker engine
// or cluster here; deploy/validate.py checks the manifests' schemas).

/// The environment variables a container `command` reads (`["worker"]`,
/// `["skipjack", "migrate"]`): clap lists each as `[env: NAME=…]` in
/// `--help`. Plus the two the logger reads.
fn env_vars_of(command: &Value) -> BTreeSet<String> {
    let args: Vec<&str> = command
        .as_array()
        .expect("a command list")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let binary = args[0];
    let exe = match binary {
        "api" => env!("CARGO_BIN_EXE_api"),
        "worker" => env!("CARGO_BIN_EXE_worker"),
        "skipjack" => env!("CARGO_BIN_EXE_skipjack"),
        other => panic!("no binary {other}"),
    };
    let out = std::process::Command::new(exe)
        .args(&args[1..])
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut vars: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(vars.contains("DATABASE_URL"), "{args:?} --help: {help}");
    vars.insert("RUST_LOG".into());
    vars.insert("SKIPJACK_LOG_FORMAT".into());
    vars
}

/// The binary a container command runs (`["skipjack", "migrate"]` → skipjack).
fn binary_of(command: &Value) -> String {
    command[0].as_str().unwrap_or_default().to_owned()
}

/// `host:port` → port.
fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn compose_services_mounts_and_settings_hold_together() {
    let compose = yaml_file(&repo().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "postgres",
            "redis",
            "migrate",
            "api",
            "worker",
            "prometheus",
            "grafana"
        ])
    );
    let volumes = compose["volumes"].as_object().expect("named volumes");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for (name, service) in services {
        // Dependencies name services, with conditions they can meet.
        match &service["depends_on"] {
            Value::Null => {}
            Value::Array(list) => {
                for dep in list {
                    assert!(
                        names.contains(dep.as_str().unwrap()),
                        "{name} depends on {dep}"
                    );
                }
            }
            Value::Object(map) => {
                for (dep, how) in map {
                    assert!(names.contains(dep.as_str()), "{name} depends on {dep}");
                    let condition = how["condition"].as_str().unwrap();
                    match condition {
                        "service_healthy" => assert!(
                            services[dep]["healthcheck"].is_object(),
                            "{name} waits for {dep} to be healthy, which has no healthcheck"
                        ),
                        "service_completed_successfully" => {
                            assert_eq!(services[dep]["restart"], "no", "{dep} must be one-shot")
                        }
                        "service_started" => {}
                        other => panic!("{name}: unknown condition {other}"),
                    }
                }
            }
            other => panic!("{name}: depends_on {other}"),
        }
        // Bind mounts exist in the repository; named volumes are declared.
        if let Some(mounts) = service["volumes"].as_array() {
            for mount in mounts {
                let source = mount.as_str().unwrap().split(':').next().unwrap();
                if let Some(path) = source.strip_prefix("./") {
                    assert!(repo().join(path).exists(), "{name} mounts missing ./{path}");
                } else {
                    assert!(
                        volumes.contains_key(source),
                        "{name}: undeclared volume {source}"
                    );
                }
            }
        }
        // skipjack containers: a built binary, and only settings it reads.
        if service["image"] == "skipjack:local" {
            assert_eq!(service["build"], ".", "{name} must build the Dockerfile");
            let binary = binary_of(&service["command"]);
            assert!(
                dockerfile.contains(&format!("--bin {binary}"))
                    && dockerfile.contains(&format!("/out/{binary}")),
                "the Dockerfile does not build and install {binary}"
            );
            let accepted = env_vars_of(&service["command"]);
            let env = service["environment"].as_object().unwrap();
            for var in env.keys() {
                assert!(
                    accepted.contains(var),
                    "{name} sets {var}, which {binary} does not read"
                );
            }
            let database = env["DATABASE_URL"].as_str().unwrap();
            assert!(database.contains("@postgres:5432/"), "{name}: {database}");
            if let Some(redis) = env.get("REDIS_URL") {
                assert_eq!(redis, "redis://redis:6379");
            }
        }
    }
    // Workers scale with --scale: no fixed name, no host port.
    let worker = &services["worker"];
    assert!(worker["container_name"].is_null());
    assert!(
        worker["ports"].is_null(),
        "a host port clashes between replicas"
    );
    let worker_port = port_of(
        worker["environment"]["SKIPJACK_WORKER_ADDR"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(worker["expose"][0], worker_port);
    let api_env = &services["api"]["environment"];
    let api_port = port_of(api_env["SKIPJACK_API_ADDR"].as_str().unwrap());
    // The API's metrics are on their own port, which is not published.
    let api_metrics_port = port_of(api_env["SKIPJACK_METRICS_ADDR"].as_str().unwrap());
    assert_ne!(api_metrics_port, api_port);
    assert_eq!(services["api"]["expose"][0], api_metrics_port);
    for published in services["api"]["ports"].as_array().unwrap() {
        assert!(!published.as_str().unwrap().contains(api_metrics_port));
    }
    // Both health checks run `skipjack health` (the image has no curl)
    // against /ready on the port the service listens on.
    for (service, port) in [("api", api_port), ("worker", worker_port)] {
        let test = &services[service]["healthcheck"]["test"];
        assert_eq!(
            test,
            &json!([
                "CMD",
                "skipjack",
                "health",
                format!("http://127.0.0.1:{port}/ready")
            ]),
            "{service}"
        );
    }
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains(r#"CMD ["skipjack", "health"]"#));

    // Prometheus scrapes the services on the ports they serve, and loads
    // the rules; Grafana reads that Prometheus.
    let prometheus = yaml_file(&repo().join("prometheus/prometheus.yml")).remove(0);
    let jobs: BTreeMap<&str, &Value> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_name"].as_str().unwrap(), j))
        .collect();
    for (job, service, port) in [
        ("skipjack-api", "api", api_metrics_port),
        ("skipjack-worker", "worker", worker_port),
    ] {
        let sd = &jobs[job]["dns_sd_configs"][0];
        assert_eq!(sd["names"][0], service);
        assert_eq!(sd["port"].to_string(), port);
    }
    for rules in prometheus["rule_files"].as_array().unwrap() {
        assert!(repo()
            .join("prometheus")
            .join(rules.as_str().unwrap())
            .exists());
    }
    let datasource = yaml_file(&repo().join("grafana/provisioning/datasources/prometheus.yml"));
    assert_eq!(
        datasource[0]["datasources"][0]["url"],
        "http://prometheus:9090"
    );
    assert_eq!(datasource[0]["datasources"][0]["uid"], "prometheus");
    let provider = yaml_file(&repo().join("grafana/provisioning/dashboards/skipjack.yml"));
    let dashboards_at = provider[0]["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana_mounts = services["grafana"]["volumes"].as_array().unwrap();
    assert!(grafana_mounts.iter().any(|m| m
        .as_str()
        .unwrap()
        .starts_with(&format!("./grafana/dashboards:{dashboards_at}"))));
}

#[test]
fn kubernetes_manifests_use_settings_the_binaries_read() {
    let mut shared = BTreeSet::new();
    for doc in yaml_file(&repo().join("deploy/base/config.yaml")) {
        shared.extend(doc["data"].as_object().unwrap().keys().cloned());
    }
    for doc in yaml_file(&repo().join("deploy/base/secret.example.yaml")) {
        shared.extend(doc["stringData"].as_object().unwrap().keys().cloned());
    }
    let (api, worker) = (
        env_vars_of(&json!(["api"])),
        env_vars_of(&json!(["worker"])),
    );
    for var in &shared {
        assert!(
            api.contains(var) || worker.contains(var),
            "deploy/base sets {var}, which no binary reads"
        );
    }
    let mut containers = 0;
    for file in ["api.yaml", "worker.yaml", "migrate-job.yaml"] {
        for doc in yaml_file(&repo().join("deploy/base").join(file)) {
            let Some(list) = doc["spec"]["template"]["spec"]["containers"].as_array() else {
                continue;
            };
            for c in list {
                containers += 1;
                let accepted = env_vars_of(&c["command"]);
                for e in c["env"].as_array().into_iter().flatten() {
                    let var = e["name"].as_str().unwrap();
                    assert!(accepted.contains(var), "{file} sets {var}");
                }
            }
        }
    }
    assert_eq!(containers, 3);
    // The scrape config for pods gives the jobs the names the rules use.
    let k8s = yaml_file(&repo().join("prometheus/kubernetes.yml")).remove(0);
    let relabels = k8s["scrape_configs"][0]["relabel_configs"]
        .as_array()
        .unwrap();
    assert!(relabels
        .iter()
        .any(|r| r["target_label"] == "job" && r["replacement"] == "skipjack-$1"));
    assert!(relabels.iter().any(|r| r["target_label"] == "namespace"));
}

/// Every repository path the operations files and their documents name
/// (`deploy/…`, `prometheus/…`, `grafana/…`, `docs/…`) exists.
#[test]
fn operations_files_name_only_files_that_exist() {
    let mut files = vec![
        repo().join("README.md"),
        repo().join("deploy/README.md"),
        repo().join("docker-compose.yml"),
        repo().join("Dockerfile"),
    ];
    for dir in [
        "prometheus",
        "deploy/base",
        "deploy/hpa",
        "deploy/keda",
        "deploy/monitoring",
    ] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for prefix in ["deploy/", "prometheus/", "grafana/", "docs/"] {
            for (at, _) in text.match_indices(prefix) {
                // Only paths that start a word (not URLs' path parts).
                if at > 0 {
                    let before = text[..at].chars().last().unwrap();
                    if before.is_alphanumeric() || before == '/' || before == '.' || before == '-' {
                        continue;
                    }
                }
                let path: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || "/._-".contains(*c))
                    .collect();
                // An image name (`grafana/grafana:11.2.0`), not a path.
                if text[at + path.len()..].starts_with(':') {
                    continue;
                }
                let path = path.trim_end_matches(['.', '/']);
                if path.ends_with('/') || path == prefix.trim_end_matches('/') {
                    continue;
                }
                checked += 1;
                assert!(
                    repo().join(path).exists(),
                    "{} names {path}, which does not exist",
                    file.display()
                );
            }
        }
    }
    assert!(checked > 20, "{checked}");
}

/// A small YAML reader for this repository's own files (Cargo.toml has no
/// YAML crate, and these files are ours): block mappings and sequences,
/// plain and quoted scalars, flow sequences and mappings of scalars, block
/// scalars (`|`, `>`, with `-`), comments and `---` documents. Anything
/// else (anchors, tags, multi-line flow) is an error, never a guess.
mod yaml {
    use serde_json::{Map, Number, Value};

    pub fn parse(text: &str) -> Result<Vec<Value>, String> {
        let mut docs = Vec::new();
        let mut current = Vec::new();
        for line in text.lines() {
            if line.trim_end() == "---" {
                docs.push(std::mem::take(&mut current));
            } else {
                current.push(line.to_owned());
            }
        }
        docs.push(current);
        let mut out = Vec::new();
        for lines in docs {
            let mut p = Parser { lines, pos: 0 };
            p.skip_blank();
            if p.pos < p.lines.len() {
                let indent = p.indent();
                out.push(p.node(indent)?);
                p.skip_blank();
                if p.pos < p.lines.len() {
                    return Err(format!("line {}: unexpected content", p.pos + 1));
                }
            }
        }
        Ok(out)
    }

    struct Parser {
        lines: Vec<String>,
        pos: usize,
    }

    /// `line` without its comment (a `#` at the start or after a space,
    /// outside quotes).
    fn strip_comment(line: &str) -> &str {
        let mut quote = None;
        let mut prev = ' ';
        for (i, c) in line.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '#' && prev.is_whitespace() => return &line[..i],
                None => {}
            }
            prev = c;
        }
        line
    }

    impl Parser {
        fn content(&self, i: usize) -> &str {
            strip_comment(&self.lines[i]).trim_end()
        }

        fn skip_blank(&mut self) {
            while self.pos < self.lines.len() && self.content(self.pos).trim().is_empty() {
                self.pos += 1;
            }
        }

        fn indent(&self) -> usize {
            let line = &self.lines[self.pos];
            line.len() - line.trim_start().len()
        }

        fn node(&mut self, indent: usize) -> Result<Value, String> {
            let text = self.content(self.pos).trim_start().to_owned();
            if text == "-" || text.starts_with("- ") {
                self.sequence(indent)
            } else if split_key(&text).is_some() {
                self.mapping(indent)
            } else {
                self.pos += 1;
                scalar(&text)
            }
        }

        fn sequence(&mut self, indent: usize) -> Result<Value, String> {
            let mut items = Vec::new();
            loop {
                self.skip_blank();
                if self.pos >= self.lines.len() || self.indent() != indent {
                    break;
                }
                let text = self.content(self.pos).trim_start().to_owned();
                if !(text == "-" || text.starts_with("- ")) {
                    break;
                }
                let rest = text[1..].trim_start();
                if rest.is_empty() {
                    self.pos += 1;
                    self.skip_blank();
                    let inner = self.indent();
                    if inner <= indent {
                        return Err(format!("line {}: empty sequence item", self.pos));
                    }
                    items.push(self.node(inner)?);
                } else if split_key(rest).is_some() {
                    // "- key: value": a mapping whose first line starts
                    // after the dash; rewrite the dash as indentation.
                    let column = indent + 1 + (text[1..].len() - rest.len());
                    let line = &mut self.lines[self.pos];
                    line.replace_range(indent..indent + 1, " ");
                    items.push(self.mapping(column)?);
                } else {
                    self.pos += 1;
                    items.push(scalar(rest)?);
                }
            }
            Ok(Value::Array(items))
        }

        fn mapping(&mut self, indent: usize) -> Result<Value, String> {
            let mut map = Map::new();
            loop {
                self.skip_blank();
                if self.pos >= self.lines.len() || self.indent() != indent {
                    break;
                }
                let text = self.content(self.pos).trim_start().to_owned();
                if text.starts_with("- ") {
                    break;
                }
                let line_no = self.pos + 1;
                let (key, value) = split_key(&text)
                    .ok_or_else(|| format!("line {line_no}: expected `key: value`"))?;
                let key = match scalar(&key)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                self.pos += 1;
                let value = value.trim();
                let parsed = if value.is_empty() {
                    self.skip_blank();
                    if self.pos < self.lines.len() && self.indent() > indent {
                        let inner = self.indent();
                        self.node(inner)?
                    } else if self.pos < self.lines.len()
                        && self.indent() == indent
                        && self.content(self.pos).trim_start().starts_with("- ")
                    {
                        self.sequence(indent)?
                    } else {
                        Value::Null
                    }
                } else if matches!(value, "|" | "|-" | ">" | ">-" | "|+" | ">+") {
                    self.block_scalar(indent, value)?
                } else {
                    scalar(value)?
                };
                if map.insert(key.clone(), parsed).is_some() {
                    return Err(format!("line {line_no}: duplicate key {key}"));
                }
            }
            Ok(Value::Object(map))
        }

        fn block_scalar(&mut self, indent: usize, style: &str) -> Result<Value, String> {
            let mut raw = Vec::new();
            while self.pos < self.lines.len() {
                let line = &self.lines[self.pos];
                let blank = line.trim().is_empty();
                let deeper = line.len() - line.trim_start().len() > indent;
                if !blank && !deeper {
                    break;
                }
                raw.push(line.clone());
                self.pos += 1;
            }
            while raw.last().is_some_and(|l| l.trim().is_empty()) {
                raw.pop();
            }
            let block_indent = raw
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let lines: Vec<&str> = raw
                .iter()
                .map(|l| l.get(block_indent..).unwrap_or(""))
                .collect();
            let mut text = if style.starts_with('|') {
                lines.join("\n")
            } else {
                lines.join(" ")
            };
            if !style.ends_with('-') {
                text.push('\n');
            }
            Ok(Value::String(text))
        }
    }

    /// `key: value` (or `key:`) split at the first `: ` outside quotes.
    fn split_key(text: &str) -> Option<(String, String)> {
        let mut quote = None;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for (n, &(i, c)) in chars.iter().enumerate() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if (c == '\'' || c == '"') && n == 0 => quote = Some(c),
                None if c == '[' || c == '{' => return None,
                None if c == ':' => {
                    let next = chars.get(n + 1).map(|&(_, c)| c);
                    if next.is_none() || next == Some(' ') {
                        return Some((text[..i].trim().to_owned(), text[i + 1..].to_owned()));
                    }
                }
                None => {}
            }
        }
        None
    }

    fn scalar(text: &str) -> Result<Value, String> {
        let text = text.trim();
        if text.starts_with('&') || text.starts_with('*') || text.starts_with('!') {
            return Err(format!("unsupported YAML: {text}"));
        }
        if let Some(inner) = text.strip_prefix('"') {
            let inner = inner
                .strip_suffix('"')
                .ok_or_else(|| format!("unclosed string: {text}"))?;
            return serde_json::from_str(&format!("\"{inner}\""))
                .map_err(|e| format!("bad string {text}: {e}"));
        }
        if let Some(inner) = text.strip_prefix('\'') {
            let inner = inner
                .strip_suffix('\'')
                .ok_or_else(|| format!("unclosed string: {text}"))?;
            return Ok(Value::String(inner.replace("''", "'")));
        }
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("multi-line flow sequence: {text}"))?;
            return split_flow(inner)
                .iter()
                .map(|item| scalar(item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array);
        }
        if let Some(inner) = text.strip_prefix('{') {
            let inner = inner
                .strip_suffix('}')
                .ok_or_else(|| format!("multi-line flow mapping: {text}"))?;
            let mut map = Map::new();
            for item in split_flow(inner) {
                let (k, v) = split_key(&item).ok_or_else(|| format!("bad flow mapping {text}"))?;
                map.insert(k, scalar(&v)?);
            }
            return Ok(Value::Object(map));
        }
        Ok(match text {
            "" | "~" | "null" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                if let Ok(n) = text.parse::<i64>() {
                    Value::Number(n.into())
                } else if let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .filter(|_| {
                        text.chars()
                            .all(|c| c.is_ascii_digit() || ".-+eE".contains(c))
                    })
                    .and_then(Number::from_f64)
                {
                    Value::Number(n)
                } else {
                    Value::String(text.to_owned())
                }
            }
        })
    }

    /// The items of a flow collection's inside, split at top-level commas.
    fn split_flow(inner: &str) -> Vec<String> {
        let mut items = Vec::new();
        let mut current = String::new();
        let mut quote = None;
        let mut depth = 0;
        for c in inner.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '[' || c == '{' => depth += 1,
                None if c == ']' || c == '}' => depth -= 1,
                None if c == ',' && depth == 0 => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                None => {}
            }
            current.push(c);
        }
        if !current.trim().is_empty() {
            items.push(current);
        }
        items.into_iter().map(|s| s.trim().to_owned()).collect()
    }

    #[test]
    fn reads_what_this_repository_writes() {
        let text = r#"
# a comment
name: skipjack   # trailing comment
list:
  - a
  - "b # not a comment"
  - key: 1
    other: [x, 'y z', 3]
  -
    nested: {a: b}
same_indent:
- one
- two
block: |
  line one
    indented
  line three
folded: >-
  joined
  words
empty:
quoted: 'it''s'
port: "8080"
number: 0.5
---
second: true
"#;
        let docs = parse(text).unwrap();
        assert_eq!(docs.len(), 2);
        let expected = serde_json::json!({
            "name": "skipjack",
            "list": ["a", "b # not a comment", {"key": 1, "other": ["x", "y z", 3]}, {"nested": {"a": "b"}}],
            "same_indent": ["one", "two"],
            "block": "line one\n  indented\nline three\n",
            "folded": "joined words",
            "empty": null,
            "quoted": "it's",
            "port": "8080",
            "number": 0.5,
        });
        assert_eq!(docs[0], expected);
        assert_eq!(docs[1], serde_json::json!({"second": true}));
        assert!(parse("a: &anchor 1").is_err());
        assert!(parse("a: [1,\n 2]").is_err());
    }
}
