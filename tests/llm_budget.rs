//! Provider budgets (`SKIPJACK_LLM_RPM` / `SKIPJACK_LLM_TPM`) held by every
//! worker process together: the GCRA statement under concurrent reservers
//! from several pools, token correction, the pool's choice of an endpoint
//! with budget, snoozed jobs that keep their attempt, and the acceptance
//! run: four `worker` processes against a local mock OpenAI-compatible
//! server, checked window by window (the one slow test here).

mod common;
#[allow(dead_code)] // shared with the provider tests, which use all of it
mod common_llm;

use common::chat::{chat_job, conversations, enqueue_all};
use common::{eventually, TestDb};
use common_llm::{MockServer, Reply};
use serde_json::json;
use skipjack::chat::turn::ChatHandler;
use skipjack::ids::JobId;
use skipjack::llm::budget::{Budget, Reserve};
use skipjack::llm::pool::Pool;
use skipjack::llm::{
    self, BudgetLimits, ChatMessage, ChatRequest, LlmConfig, LlmError, ProviderKind, Secret,
};
use skipjack::queue::{Backoff, NewJob};
use skipjack::worker::{NoopHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn limits(rpm: u64, tpm: u64, burst: f64) -> BudgetLimits {
    BudgetLimits { rpm, tpm, burst }
}

fn budget(pool: &PgPool, model: &str, label: &str, l: BudgetLimits) -> Budget {
    Budget::new(pool.clone(), model, [(label.to_owned(), l)]).expect("a limited budget")
}

fn granted(r: &Reserve) -> bool {
    matches!(r, Reserve::Granted(_))
}

// ------------------------------------------------------- the GCRA statement

/// Forty reservers on four pools (four "processes") race for a budget of
/// 5 calls (500 tokens at 100 each; requests allow 10): exactly 5 win, and
/// the losers took nothing from the request budget either (both or
/// neither): 5 more token-free reservations fit, and no 6th.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservers_never_exceed_the_budget() {
    let db = TestDb::new().await;
    // Bursts of half the limit: 10 requests (6 s each after that) and 500
    // tokens (0.12 s per token): nothing frees during the test.
    let l = limits(20, 1000, 0.5);
    let mut budgets = Vec::new();
    for _ in 0..4 {
        let pool = db.new_pool(10).await;
        budgets.push(Arc::new(budget(&pool, "m", "http://up#0", l)));
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let b = budgets[i % 4].clone();
        tasks.push(tokio::spawn(
            async move { b.try_reserve(0, 100).await.unwrap() },
        ));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| granted(r)).count(), 5);
    for r in results.iter().filter(|r| !granted(r)) {
        let Reserve::Wait(wait) = r else {
            panic!("{r:?}")
        };
        // A hint from the statement's snapshot: never more than the time
        // 100 tokens take to free behind a full budget (12 s) plus one.
        assert!(*wait <= Duration::from_secs(13), "{wait:?}");
    }
    let mut more = 0;
    for _ in 0..8 {
        if granted(&budgets[0].try_reserve(0, 0).await.unwrap()) {
            more += 1;
        }
    }
    assert_eq!(more, 5, "the request budget lost calls that were refused");
    // A call bigger than the token burst can never fit.
    assert_eq!(
        budgets[1].try_reserve(0, 501).await.unwrap(),
        Reserve::TooLarge { burst: 500 }
    );
}

/// Settling gives back what the provider did not count, and charges what
/// it counted beyond the reservation.
#[tokio::test]
async fn settling_gives_back_and_charges_the_difference() {
    let db = TestDb::new().await;
    // 500 tokens at once, 0.12 s per token after that.
    let b = budget(&db.pool, "m", "http://up#0", limits(0, 1000, 0.5));
    let Reserve::Granted(first) = b.try_reserve(0, 400).await.unwrap() else {
        panic!("an empty budget refused 400 tokens")
    };
    assert!(!granted(&b.try_reserve(0, 200).await.unwrap()));
    // The provider counted 100: 300 come back, and 200 fit again.
    b.settle(&first, 100).await.unwrap();
    let Reserve::Granted(second) = b.try_reserve(0, 200).await.unwrap() else {
        panic!("the give-back did not free the budget")
    };
    // The provider counted 500 for a reservation of 200: 300 more are
    // charged, so the budget is 100 tokens over its burst and one token
    // waits about (100 + 1) * 0.12 s.
    b.settle(&second, 500).await.unwrap();
    match b.try_reserve(0, 1).await.unwrap() {
        Reserve::Wait(wait) => assert!(wait > Duration::from_secs(10), "{wait:?}"),
        other => panic!("the charge was not taken: {other:?}"),
    }
}

/// Budgets are per model: one model without budget does not hold back
/// another on the same endpoint.
#[tokio::test]
async fn budgets_are_per_model() {
    let db = TestDb::new().await;
    let l = limits(20, 0, 0.05); // one request at once
    let a = budget(&db.pool, "model-a", "http://up#0", l);
    let b = budget(&db.pool, "model-b", "http://up#0", l);
    assert!(granted(&a.try_reserve(0, 10).await.unwrap()));
    assert!(!granted(&a.try_reserve(0, 10).await.unwrap()));
    assert!(granted(&b.try_reserve(0, 10).await.unwrap()));
}

// ------------------------------------------------------------ the pool

fn openai_config(urls: &str) -> LlmConfig {
    LlmConfig {
        provider: ProviderKind::Openai,
        base_url: Some(urls.to_owned()),
        model: Some("gpt-test".into()),
        openai_api_key: Some(Secret::new("sk-budget-test")),
        max_tokens: 64,
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    }
}

fn budget_for(pool: &PgPool, cfg: &LlmConfig) -> Budget {
    let labels = Pool::budget_labels(cfg).unwrap();
    let limits = cfg.budget_limits().unwrap();
    Budget::new(
        pool.clone(),
        &cfg.model_or_default(),
        labels.into_iter().zip(limits),
    )
    .expect("a limited budget")
}

/// With two endpoints, the one out of budget is stepped over: every call
/// goes through, the spare ones to the endpoint that has budget. With no
/// budget anywhere the call is not sent and says how long to wait.
#[tokio::test]
async fn the_pool_prefers_an_endpoint_with_budget() {
    let db = TestDb::new().await;
    let a = MockServer::start(|_| Reply::openai_ok("from a")).await;
    let b = MockServer::start(|_| Reply::openai_ok("from b")).await;
    let mut cfg = openai_config(&format!("{},{}", a.url, b.url));
    cfg.rpm = Some("20,0".into()); // endpoint a: one call at once
    let provider = llm::build_provider_with_budget(&cfg, Some(budget_for(&db.pool, &cfg))).unwrap();
    let req = ChatRequest {
        system: None,
        messages: vec![ChatMessage::user("hello")],
    };
    for _ in 0..5 {
        provider
            .chat(&req)
            .await
            .expect("a call with budget somewhere");
    }
    assert_eq!(a.count(), 1);
    assert_eq!(b.count(), 4);

    // One endpoint, out of budget: Throttled, nothing sent.
    let single = MockServer::start(|_| Reply::openai_ok("x")).await;
    let mut cfg = openai_config(&single.url);
    cfg.rpm = Some("20".into());
    let provider = llm::build_provider_with_budget(&cfg, Some(budget_for(&db.pool, &cfg))).unwrap();
    provider.chat(&req).await.unwrap();
    match provider.chat(&req).await {
        Err(LlmError::Throttled { wait, .. }) => {
            // 60 s / (20 - 1) per request, minus what already passed.
            assert!(wait > Duration::from_secs(2), "{wait:?}")
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(single.count(), 1);
}

// ------------------------------------------------------------ snoozing

async fn history_state(pool: &PgPool, job: JobId) -> Option<(String, i32)> {
    sqlx::query_as("SELECT state::text, attempts FROM job_history WHERE id = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// A job that finds no budget goes back to the queue without using an
/// attempt (it has only one), with a 'snoozed' event, and runs when budget
/// frees; meanwhile its slot (the worker has one) runs a job of another
/// kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozed_job_keeps_its_attempt_and_frees_its_slot() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|_| Reply::openai_ok("hi")).await;
    let mut cfg = openai_config(&mock.url);
    // One request at once, then one every 60 / 19 s.
    cfg.rpm = Some("20".into());
    let provider = llm::build_provider_with_budget(&cfg, Some(budget_for(&db.pool, &cfg))).unwrap();
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(NoopHandler)
            .register(ChatHandler::new(db.pool.clone(), provider))
            .config(WorkerConfig {
                id: "w".into(),
                concurrency: 1,
                poll_interval: Duration::from_millis(50),
                backoff: Backoff {
                    base: Duration::from_millis(20),
                    max: Duration::from_secs(60),
                },
                maintenance: None,
                ..WorkerConfig::default()
            })
            .build()
            .unwrap(),
    );
    let convs = conversations(&db.pool, 2).await;
    let jobs = enqueue_all(
        &db.pool,
        &[
            chat_job(convs[0], "first").with_max_attempts(1),
            chat_job(convs[1], "second").with_max_attempts(1),
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (worker, stop) = (worker.clone(), stop.clone());
        async move { worker.run(stop).await.unwrap() }
    });
    let snoozed = |pool: PgPool| async move {
        let rows: Vec<(JobId, i32)> =
            sqlx::query_as("SELECT job_id, attempt FROM job_events WHERE event = 'snoozed'")
                .fetch_all(&pool)
                .await
                .unwrap();
        rows
    };
    eventually(Duration::from_secs(20), "a job is snoozed", || {
        let pool = db.pool.clone();
        async move { !snoozed(pool).await.is_empty() }
    })
    .await;
    let events = snoozed(db.pool.clone()).await;
    let (late, attempt) = events[0];
    assert_eq!(attempt, 1, "the snoozed attempt");
    let early = if late == jobs[0] { jobs[1] } else { jobs[0] };
    // The two outcomes may be written by concurrent transactions of the
    // completer: the other job's completion can commit after the snooze.
    eventually(Duration::from_secs(20), "the other job completes", || {
        let pool = db.pool.clone();
        async move { history_state(&pool, early).await.is_some() }
    })
    .await;
    assert_eq!(
        history_state(&db.pool, early).await,
        Some(("completed".into(), 1))
    );
    // Queued again, its attempt given back.
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state::text, attempt FROM jobs WHERE id = $1")
            .bind(late)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("queued", 0));
    // The one slot is free for other work meanwhile.
    let noop = enqueue_all(&db.pool, &[NewJob::new("noop", json!({}))]).await[0];
    eventually(Duration::from_secs(20), "the noop job completes", || {
        let pool = db.pool.clone();
        async move { history_state(&pool, noop).await.is_some() }
    })
    .await;
    // And the snoozed job completes on its one attempt once budget frees.
    eventually(Duration::from_secs(30), "the snoozed job completes", || {
        let pool = db.pool.clone();
        async move { history_state(&pool, late).await.is_some() }
    })
    .await;
    assert_eq!(
        history_state(&db.pool, late).await,
        Some(("completed".into(), 1))
    );
    let noop_first: bool = sqlx::query_scalar(
        "SELECT (SELECT finished_at FROM job_history WHERE id = $1)
              < (SELECT finished_at FROM job_history WHERE id = $2)",
    )
    .bind(noop)
    .bind(late)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(noop_first, "the noop job waited behind the snoozed one");
    assert_eq!(mock.count(), 2, "a snoozed call was sent");
    stop.cancel();
    run.await.unwrap();
}

// ------------------------------------------------- the acceptance run

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The most events of `times` (seconds, sorted) weighted by `weights` in
/// any window of `window` seconds.
fn max_window(times: &[f64], weights: &[u64], window: f64) -> u64 {
    let (mut best, mut sum, mut start) = (0, 0, 0);
    for end in 0..times.len() {
        sum += weights[end];
        while times[end] - times[start] >= window {
            sum -= weights[start];
            start += 1;
        }
        best = best.max(sum);
    }
    best
}

const RPM: u64 = 600;
const TPM: u64 = 60_000;

/// Four worker processes share one budget of 600 requests and 60,000
/// tokens per minute in front of a mock upstream that could take far more.
/// Over ~67 s, no 60-second window of arrivals at the mock holds more than
/// 600 requests or 60,000 reported tokens, and the queue never runs dry (the
/// budget is the only limit). The rate achieved is printed, not asserted: a
/// wall-clock figure (BENCHMARKS.md, "Provider budget"). Each call reserves
/// ~205 tokens (estimate + max_tokens 200) and uses 75; the correction that
/// makes the difference is tested without a clock by
/// `settling_gives_back_and_charges_the_difference`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_share_the_provider_budget() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|_| {
        Reply::json(
            200,
            json!({
                "id": "chatcmpl-budget",
                "object": "chat.completion",
                "model": "gpt-mock",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 35, "total_tokens": 75}
            }),
        )
        .delay(Duration::from_millis(50))
    })
    .await;
    let convs = conversations(&db.pool, 1000).await;
    let jobs: Vec<NewJob> = convs
        .iter()
        .enumerate()
        .map(|(i, c)| chat_job(*c, &format!("message {i}")))
        .collect();
    enqueue_all(&db.pool, &jobs).await;

    let dir = std::env::temp_dir().join(format!("skipjack-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut children = Vec::new();
    for i in 0..4 {
        let log = std::fs::File::create(dir.join(format!("worker-{i}.log"))).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .env("RUST_LOG", "warn")
            .env("SKIPJACK_LOG_FORMAT", "text")
            .env("DATABASE_URL", &db.url)
            .env("SKIPJACK_WORKER_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("SKIPJACK_LLM_PROVIDER", "openai")
            .env("SKIPJACK_LLM_BASE_URL", &mock.url)
            .env("SKIPJACK_LLM_MODEL", "gpt-mock")
            .env("OPENAI_API_KEY", "sk-budget")
            .env("SKIPJACK_LLM_MAX_TOKENS", "200")
            .env("SKIPJACK_LLM_RPM", RPM.to_string())
            .env("SKIPJACK_LLM_TPM", TPM.to_string())
            .env("SKIPJACK_CONCURRENCY", "8")
            .env("SKIPJACK_POLL_INTERVAL_MS", "100")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start worker");
        children.push(child);
    }
    // The run: from the first call at the mock, 67 s of event-free waiting
    // is the point of this test (the limiter is the only bottleneck).
    eventually(Duration::from_secs(60), "the first call arrives", || {
        let n = mock.count();
        async move { n > 0 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(67)).await;
    for child in &mut children {
        child.start_kill().unwrap();
    }
    for child in &mut children {
        let _ = child.wait().await;
    }

    let requests = mock.requests();
    let first = requests[0].at;
    let mut times: Vec<f64> = requests
        .iter()
        .map(|r| r.at.duration_since(first).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let ones = vec![1; times.len()];
    let tokens: Vec<u64> = requests.iter().map(|r| r.tokens.unwrap_or(0)).collect();
    let max_requests = max_window(&times, &ones, 60.0);
    let max_tokens = max_window(&times, &tokens, 60.0);
    let span = times.last().copied().unwrap_or(0.0);
    let achieved = (times.len() - 1) as f64 / span * 60.0;
    let unfinished: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    println!(
        "requests {} over {span:.1} s: achieved {achieved:.1}/min (limit {RPM}); \
         max in a 60 s window: {max_requests} requests, {max_tokens} tokens (limit {TPM}); \
         jobs left {unfinished}",
        times.len()
    );
    assert!(max_requests <= RPM, "{max_requests} requests in 60 s");
    assert!(max_tokens <= TPM, "{max_tokens} tokens in 60 s");
    assert!(
        unfinished > 0,
        "the queue ran dry: the run did not saturate"
    );
    // No snoozed job used an attempt: every finished job took one.
    let extra: i64 = sqlx::query_scalar("SELECT count(*) FROM job_history WHERE attempts <> 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(extra, 0);
}
