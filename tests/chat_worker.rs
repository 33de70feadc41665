//! The chat worker end to end: chat jobs enqueued in a real Postgres, run by
//! `Worker`s with the `ChatHandler`, answered by the simulated provider or
//! by a local mock Anthropic / OpenAI-compatible server (never the
//! internet), with and without the Redis history cache (Redis at
//! 127.0.0.1:6379, one key prefix per test).

mod common;
#[allow(dead_code)] // shared with the provider tests, which use all of it
mod common_llm;

use common::chat::{chat_job, conversations, enqueue_all};
use common::{count, eventually, TestDb};
use common_llm::{closed_port_url, MockServer, Recorded, Reply};
use serde_json::{json, Value};
use skipjack::chat::cache::{CacheConfig, HistoryCache};
use skipjack::chat::turn::ChatHandler;
use skipjack::chat::{store, CHAT_KIND};
use skipjack::health;
use skipjack::ids::{ConversationId, JobId};
use skipjack::llm::{self, LlmConfig, Provider, ProviderKind, Secret, Strategy};
use skipjack::queue::{self, Backoff, JobState, JobView, NewJob};
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Generous bound for waits that must not hang; never a timing assertion.
const NO_HANG: Duration = Duration::from_secs(60);

const ANTHROPIC_KEY: &str = "sk-ant-test-key";
const OPENAI_KEY: &str = "sk-openai-test-key";
const REDIS_URL: &str = "redis://127.0.0.1:6379";

// ------------------------------------------------------------------ helpers

async fn enqueue_one(pool: &PgPool, job: NewJob) -> JobId {
    enqueue_all(pool, &[job]).await[0]
}

fn config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        poll_interval: Duration::from_millis(100),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        maintenance: None,
        ..WorkerConfig::default()
    }
}

fn provider(cfg: &LlmConfig) -> Arc<dyn Provider> {
    llm::build_provider(cfg).expect("provider")
}

fn simulated(latency_ms: u64, jitter_ms: u64) -> Arc<dyn Provider> {
    provider(&LlmConfig {
        simulated_latency_ms: latency_ms,
        simulated_jitter_ms: Some(jitter_ms),
        ..LlmConfig::default()
    })
}

fn anthropic_config(url: &str) -> LlmConfig {
    LlmConfig {
        provider: ProviderKind::Anthropic,
        base_url: Some(url.to_owned()),
        model: Some("claude-test".into()),
        anthropic_api_key: Some(Secret::new(ANTHROPIC_KEY)),
        max_tokens: 256,
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    }
}

fn openai_config(url: &str) -> LlmConfig {
    LlmConfig {
        provider: ProviderKind::Openai,
        base_url: Some(url.to_owned()),
        model: Some("gpt-test".into()),
        openai_api_key: Some(Secret::new(OPENAI_KEY)),
        max_tokens: 128,
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    }
}

/// A worker running until its token is cancelled; the handle joins it.
struct Running {
    worker: Arc<Worker>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(pool: PgPool, handler: ChatHandler, config: WorkerConfig) -> Running {
        let worker = Arc::new(
            Worker::builder(pool)
                .register(handler)
                .config(config)
                .build()
                .unwrap(),
        );
        let stop = CancellationToken::new();
        let (w, s) = (worker.clone(), stop.clone());
        let task = tokio::spawn(async move { w.run(s).await.unwrap() });
        Running { worker, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

async fn job(pool: &PgPool, id: JobId) -> JobView {
    queue::get(pool, id, None).await.unwrap().unwrap()
}

/// Waits until every job in `ids` is in a final state.
async fn wait_final(pool: &PgPool, ids: &[JobId], timeout: Duration) {
    let ids = ids.to_vec();
    eventually(timeout, "jobs finished", || {
        let ids = ids.clone();
        async move {
            let finished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job_history WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            finished as usize == ids.len()
        }
    })
    .await;
}

/// A conversation's messages as (role, content, job id), in order.
async fn messages(pool: &PgPool, conversation: ConversationId) -> Vec<(String, String, JobId)> {
    store::list_messages(pool, conversation)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.role.to_string(), m.content, m.job_id.unwrap()))
        .collect()
}

fn response(view: &JobView) -> String {
    view.result.as_ref().unwrap()["response"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The contents of the request's messages (the wire format's `messages`).
fn contents(recorded: &Recorded) -> Vec<(String, String)> {
    recorded.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn last_content(recorded: &Recorded) -> String {
    contents(recorded).last().unwrap().1.clone()
}

fn cache_config(prefix: &str, url: &str) -> CacheConfig {
    CacheConfig {
        url: url.to_owned(),
        ca_file: None,
        ttl: Duration::from_secs(60),
        op_timeout: Duration::from_millis(100),
        retry_after: Duration::from_millis(200),
        pool_size: 4,
        key_prefix: prefix.to_owned(),
    }
}

fn unique_prefix() -> String {
    format!("skipjack-test:{}:", uuid::Uuid::now_v7().simple())
}

async fn redis() -> deadpool_redis::redis::aio::MultiplexedConnection {
    deadpool_redis::redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running on 127.0.0.1:6379")
}

/// Checks the integrity contract: turn k of every conversation answered
/// `echo(2k-1): <message k>`, and the history is user k, assistant k, ... in
/// order, each pair from turn k's job.
async fn assert_conversations_intact(
    pool: &PgPool,
    convs: &[ConversationId],
    ids: &[Vec<JobId>],
    message: impl Fn(usize, usize) -> String,
) {
    for (c, conversation) in convs.iter().enumerate() {
        let history = messages(pool, *conversation).await;
        assert_eq!(history.len(), 2 * ids[c].len(), "conversation {c}");
        for (k, id) in ids[c].iter().enumerate() {
            let view = job(pool, *id).await;
            assert_eq!(view.state, JobState::Completed, "conversation {c} turn {k}");
            let expected = format!("echo({}): {}", 2 * k + 1, message(c, k));
            assert_eq!(response(&view), expected, "conversation {c} turn {}", k + 1);
            assert_eq!(
                history[2 * k],
                ("user".to_owned(), message(c, k), *id),
                "conversation {c} message {}",
                2 * k + 1
            );
            assert_eq!(
                history[2 * k + 1],
                ("assistant".to_owned(), expected, *id),
                "conversation {c} message {}",
                2 * k + 2
            );
        }
    }
}

// ------------------------------------------------------- providers end to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_turns_run_through_the_worker_with_history() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|r| {
        let ok = r.method == axum::http::Method::POST
            && r.path == "/v1/messages"
            && r.header("x-api-key").as_deref() == Some(ANTHROPIC_KEY)
            && r.header("anthropic-version").as_deref() == Some("2023-06-01")
            && r.body["model"] == "claude-test"
            && r.body["max_tokens"] == 256;
        if ok {
            Reply::anthropic_ok(&format!("re: {}", last_content(r)))
        } else {
            Reply::json(400, json!({"error": {"message": "bad request shape"}}))
        }
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let handler = ChatHandler::new(db.pool.clone(), provider(&anthropic_config(&mock.url)));
    let worker = Running::start(db.pool.clone(), handler, config("w"));

    let first = enqueue_one(&db.pool, chat_job(conv, "hello")).await;
    let second = enqueue_one(&db.pool, chat_job(conv, "and again")).await;
    wait_final(&db.pool, &[first, second], NO_HANG).await;
    worker.stop().await;

    for (id, message) in [(first, "hello"), (second, "and again")] {
        let view = job(&db.pool, id).await;
        assert_eq!(view.state, JobState::Completed, "{:?}", view.error);
        assert_eq!(view.attempts, 1);
        assert_eq!(response(&view), format!("re: {message}"));
        assert_eq!(view.result.as_ref().unwrap()["model"], "claude-mock");
        assert_eq!((view.input_tokens, view.output_tokens), (Some(11), Some(7)));
    }
    // The second request carried the first turn, then the new message.
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        contents(&requests[1]),
        vec![
            ("user".to_owned(), "hello".to_owned()),
            ("assistant".to_owned(), "re: hello".to_owned()),
            ("user".to_owned(), "and again".to_owned()),
        ]
    );
    let history = messages(&db.pool, conv).await;
    assert_eq!(
        history,
        vec![
            ("user".into(), "hello".into(), first),
            ("assistant".into(), "re: hello".into(), first),
            ("user".into(), "and again".into(), second),
            ("assistant".into(), "re: and again".into(), second),
        ]
    );
    let tokens: Vec<Option<i32>> = store::list_messages(&db.pool, conv)
        .await
        .unwrap()
        .iter()
        .map(|m| m.tokens)
        .collect();
    assert_eq!(
        tokens[1],
        Some(7),
        "the reply's tokens are the output tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_turn_runs_through_the_worker() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|r| {
        let bearer = format!("Bearer {OPENAI_KEY}");
        let ok = r.path == "/v1/chat/completions"
            && r.header("authorization").as_deref() == Some(bearer.as_str())
            && r.body["model"] == "gpt-test"
            && r.body["max_tokens"] == 128;
        if ok {
            Reply::openai_ok(&format!("openai says {}", last_content(r)))
        } else {
            Reply::json(400, json!({"error": {"message": "bad request shape"}}))
        }
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let llm = openai_config(&format!("{}/v1", mock.url));
    let handler =
        ChatHandler::new(db.pool.clone(), provider(&llm)).with_meter(llm.meter().unwrap());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let id = enqueue_one(&db.pool, chat_job(conv, "hi there")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!(view.state, JobState::Completed, "{:?}", view.error);
    assert_eq!(response(&view), "openai says hi there");
    assert_eq!((view.input_tokens, view.output_tokens), (Some(13), Some(5)));
    assert_eq!(
        contents(&mock.requests()[0]),
        vec![("user".to_owned(), "hi there".to_owned())]
    );
    assert_eq!(messages(&db.pool, conv).await.len(), 2);
    // The metrics are process-wide (other tests add to them): check that
    // this call's series exist.
    let text = skipjack::metrics::render();
    for series in [
        "skipjack_llm_request_seconds_count{provider=\"openai\"}",
        "skipjack_llm_tokens_total{direction=\"input\",model=\"gpt-test\",provider=\"openai\"}",
        "skipjack_llm_tokens_total{direction=\"output\",model=\"gpt-test\",provider=\"openai\"}",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_turn_is_retried_after_the_retry_after_and_completes() {
    let db = TestDb::new().await;
    let arrivals: Arc<Mutex<Vec<chrono::DateTime<chrono::Utc>>>> = Arc::default();
    let seen = arrivals.clone();
    let mock = MockServer::start(move |r| {
        let mut seen = seen.lock().unwrap();
        seen.push(chrono::Utc::now());
        if seen.len() == 1 {
            Reply::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "1")
        } else {
            Reply::anthropic_ok(&format!("re: {}", last_content(r)))
        }
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let handler = ChatHandler::new(db.pool.clone(), provider(&anthropic_config(&mock.url)));
    // Retry-After (1 s) is within the retry maximum, so it is honoured.
    let config = WorkerConfig {
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_secs(5),
        },
        ..config("w")
    };
    let worker = Running::start(db.pool.clone(), handler, config);
    let id = enqueue_one(&db.pool, chat_job(conv, "hello")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!(
        (view.state, view.attempts),
        (JobState::Completed, 2),
        "{:?}",
        view.error
    );
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "retried");
    assert!(
        events[0].error.as_deref().unwrap().contains("slow down"),
        "{:?}",
        events[0].error
    );
    let next = events[0].next_run_at.unwrap();
    let delay = next - events[0].created_at;
    assert!(
        (delay.num_milliseconds() - 1000).abs() < 50,
        "next_run_at is Retry-After (1 s) away: {delay}"
    );
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    assert!(
        arrivals[1] >= next,
        "retried at {} before next_run_at {next}",
        arrivals[1]
    );
    assert!(arrivals[1] - arrivals[0] >= chrono::Duration::milliseconds(1000));
    assert_eq!(messages(&db.pool, conv).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_until_the_last_attempt_fail_the_job_with_the_error_kept() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|_| {
        Reply::json(
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream exploded"}}),
        )
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let handler = ChatHandler::new(db.pool.clone(), provider(&anthropic_config(&mock.url)));
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let id = enqueue_one(&db.pool, chat_job(conv, "hello").with_max_attempts(3)).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!((view.state, view.attempts), (JobState::Failed, 3));
    let error = view.error.unwrap();
    assert!(error.contains("upstream exploded"), "{error}");
    assert!(error.contains("retryable"), "{error}");
    assert_eq!(mock.count(), 3);
    assert_eq!(queue::events(&db.pool, id).await.unwrap().len(), 2);
    assert!(messages(&db.pool, conv).await.is_empty(), "no half turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_fails_at_once_and_a_bad_payload_too() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|_| {
        Reply::json(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "model: claude-test not found"}}),
        )
    })
    .await;
    let convs = conversations(&db.pool, 2).await;
    let handler = ChatHandler::new(db.pool.clone(), provider(&anthropic_config(&mock.url)));
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let bad_request = enqueue_one(&db.pool, chat_job(convs[0], "hello")).await;
    let bad_payload = enqueue_one(
        &db.pool,
        NewJob::new(CHAT_KIND, json!({"nope": 1})).with_conversation(convs[1]),
    )
    .await;
    wait_final(&db.pool, &[bad_request, bad_payload], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, bad_request).await;
    assert_eq!((view.state, view.attempts), (JobState::Failed, 1));
    let error = view.error.unwrap();
    assert!(error.contains("model: claude-test not found"), "{error}");
    assert!(error.contains("permanent"), "{error}");
    let view = job(&db.pool, bad_payload).await;
    assert_eq!((view.state, view.attempts), (JobState::Failed, 1));
    assert!(view.error.unwrap().contains("invalid chat payload"));
    assert_eq!(mock.count(), 1, "the bad payload never reached the LLM");
    assert!(skipjack::metrics::render().contains("skipjack_llm_errors_total{class=\"client\"}"));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM messages").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_times_out_and_the_turn_is_retried() {
    let db = TestDb::new().await;
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let mock = MockServer::start(move |r| {
        let mut calls = seen.lock().unwrap();
        *calls += 1;
        let reply = Reply::openai_ok(&format!("late {}", last_content(r)));
        if *calls == 1 {
            reply.delay(Duration::from_secs(30))
        } else {
            reply
        }
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let handler = ChatHandler::new(
        db.pool.clone(),
        provider(&LlmConfig {
            timeout_seconds: 0.5,
            ..openai_config(&mock.url)
        }),
    );
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let id = enqueue_one(&db.pool, chat_job(conv, "hello")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!((view.state, view.attempts), (JobState::Completed, 2));
    assert_eq!(response(&view), "late hello");
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(events.len(), 1);
    let error = events[0].error.as_deref().unwrap();
    assert!(
        error.contains("timeout") || error.contains("timed out"),
        "{error}"
    );
    assert_eq!(messages(&db.pool, conv).await.len(), 2, "one turn, once");
}

// ----------------------------------------------------- conversation integrity

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_conversations_of_ten_turns_keep_their_history_across_four_workers() {
    const CONVERSATIONS: usize = 50;
    const TURNS: usize = 10;
    let db = TestDb::new().await;
    let convs = conversations(&db.pool, CONVERSATIONS).await;
    let message = |c: usize, k: usize| format!("conversation {c} turn {}", k + 1);

    let mut workers = Vec::new();
    for w in 0..4 {
        let pool = db.new_pool(8).await;
        let handler = ChatHandler::new(pool.clone(), simulated(20, 15));
        let config = WorkerConfig {
            concurrency: 20,
            ..config(&format!("worker-{w}"))
        };
        workers.push(Running::start(pool, handler, config));
    }
    // Back to back, turn by turn, all before any answer.
    let mut jobs = Vec::new();
    for k in 0..TURNS {
        for (c, conv) in convs.iter().enumerate() {
            jobs.push(chat_job(*conv, &message(c, k)));
        }
    }
    let ids = enqueue_all(&db.pool, &jobs).await;
    wait_final(&db.pool, &ids, Duration::from_secs(120)).await;
    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(w.worker.claims());
        w.stop().await;
    }

    let per_conversation: Vec<Vec<JobId>> = (0..CONVERSATIONS)
        .map(|c| (0..TURNS).map(|k| ids[k * CONVERSATIONS + c]).collect())
        .collect();
    assert_conversations_intact(&db.pool, &convs, &per_conversation, message).await;
    let workers_used = count(
        &db.pool,
        "SELECT count(DISTINCT worker) FROM job_history WHERE state = 'completed'",
    )
    .await;
    assert!(workers_used >= 2, "all work went to {workers_used} worker");
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_history WHERE attempts <> 1"
        )
        .await,
        0
    );
}

// -------------------------------------------------------------- upstream pool

// On one thread: the cool-down is let pass with a paused clock.
#[tokio::test]
async fn upstream_pool_spreads_turns_and_ejects_then_readmits_a_failing_endpoint() {
    let db = TestDb::new().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let flaky = MockServer::start(move |r| {
        if flag.load(Ordering::SeqCst) {
            Reply::openai_ok(&format!("flaky: {}", last_content(r)))
        } else {
            Reply::json(503, json!({"error": {"message": "overloaded"}}))
        }
    })
    .await;
    let a = MockServer::start(|r| Reply::openai_ok(&format!("a: {}", last_content(r)))).await;
    let b = MockServer::start(|r| Reply::openai_ok(&format!("b: {}", last_content(r)))).await;
    // Longer than the test: it passes only when the test lets it.
    let cool_down = Duration::from_secs(3600);
    let llm = provider(&LlmConfig {
        strategy: Strategy::RoundRobin,
        eject_after: 2,
        eject_seconds: cool_down.as_secs_f64(),
        ..openai_config(&format!("{},{},{}", flaky.url, a.url, b.url))
    });
    let convs = conversations(&db.pool, 60).await;
    let handler = ChatHandler::new(db.pool.clone(), llm.clone());
    // One turn at a time, so the pool sees failures before it sends more.
    let worker = Running::start(
        db.pool.clone(),
        handler,
        WorkerConfig {
            concurrency: 1,
            ..config("w")
        },
    );

    let first: Vec<JobId> = enqueue_all(
        &db.pool,
        &convs[..30]
            .iter()
            .map(|c| chat_job(*c, "one"))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_final(&db.pool, &first, NO_HANG).await;
    for id in &first {
        let view = job(&db.pool, *id).await;
        assert_eq!(view.state, JobState::Completed, "{:?}", view.error);
    }
    // Ejected after two failures, and no cool-down passed: no probe.
    assert_eq!(flaky.count(), 2, "requests to the failing endpoint");
    assert!(llm.endpoint_stats()[0].failures >= 2);
    let (a_first, b_first) = (a.count(), b.count());
    assert_eq!(a_first + b_first, 30, "every turn answered by a or b");
    // Round robin hands an ejected endpoint's turn to the next one, so the
    // split is uneven but both take traffic.
    assert!(
        a_first >= 5 && b_first >= 5,
        "spread: {a_first} vs {b_first}"
    );

    // Healthy again: after the cool-down it gets its share back.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::pause();
    tokio::time::advance(cool_down + Duration::from_secs(1)).await;
    tokio::time::resume();
    let flaky_before = flaky.count();
    let second: Vec<JobId> = enqueue_all(
        &db.pool,
        &convs[30..]
            .iter()
            .map(|c| chat_job(*c, "two"))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_final(&db.pool, &second, NO_HANG).await;
    worker.stop().await;
    let readmitted = flaky.count() - flaky_before;
    assert!(
        readmitted >= 5,
        "the readmitted endpoint took {readmitted} of 30 turns"
    );
    assert!(!llm.endpoint_stats()[0].ejected);
    let answered_by_flaky = count(
        &db.pool,
        "SELECT count(*) FROM job_history WHERE result->>'response' LIKE 'flaky:%'",
    )
    .await;
    assert_eq!(answered_by_flaky as usize, readmitted);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM messages").await, 120);
}

// ---------------------------------------------------------------------- Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_serves_the_history_without_reading_the_messages() {
    let db = TestDb::new().await;
    let mock = MockServer::start(|r| Reply::openai_ok(&format!("re: {}", last_content(r)))).await;
    let conv = conversations(&db.pool, 1).await[0];
    let prefix = unique_prefix();
    let cache = HistoryCache::new(&cache_config(&prefix, REDIS_URL)).unwrap();
    let handler = ChatHandler::new(db.pool.clone(), provider(&openai_config(&mock.url)))
        .with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));

    let first = enqueue_one(&db.pool, chat_job(conv, "original words")).await;
    wait_final(&db.pool, &[first], NO_HANG).await;
    // The completion writes history + turn to Redis in the background.
    eventually(NO_HANG, "history cached", || async {
        cache.stats().writes >= 1
    })
    .await;
    // Change the stored words behind the worker's back: only a history
    // that did not come from the messages table can still show the
    // original ones.
    sqlx::query("UPDATE messages SET content = 'tampered' WHERE conversation_id = $1")
        .bind(conv)
        .execute(&db.pool)
        .await
        .unwrap();
    let writes_before_second = cache.stats().writes;
    let second = enqueue_one(&db.pool, chat_job(conv, "second")).await;
    wait_final(&db.pool, &[second], NO_HANG).await;
    assert_eq!(
        contents(&mock.requests()[1]),
        vec![
            ("user".to_owned(), "original words".to_owned()),
            ("assistant".to_owned(), "re: original words".to_owned()),
            ("user".to_owned(), "second".to_owned()),
        ],
        "history served from Redis"
    );
    assert_eq!((cache.stats().hits, cache.stats().misses), (1, 0));
    assert!(skipjack::metrics::render().contains("skipjack_cache_requests_total{result=\"hit\"}"));

    // Control: without the cached entry the same read shows Postgres's rows.
    eventually(NO_HANG, "second turn cached", || async {
        cache.stats().writes > writes_before_second
    })
    .await;
    let mut conn = redis().await;
    let ttl: i64 = deadpool_redis::redis::cmd("PTTL")
        .arg(cache.key(conv))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "cached with the TTL: {ttl}");
    let _: () = deadpool_redis::redis::cmd("DEL")
        .arg(cache.key(conv))
        .query_async(&mut conn)
        .await
        .unwrap();
    let third = enqueue_one(&db.pool, chat_job(conv, "third")).await;
    wait_final(&db.pool, &[third], NO_HANG).await;
    worker.stop().await;
    let sent = contents(&mock.requests()[2]);
    assert_eq!(sent.len(), 5);
    assert_eq!(sent[0].1, "tampered", "read from Postgres after the DEL");
    assert_eq!(cache.stats().misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_that_missed_an_update_is_never_served() {
    let db = TestDb::new().await;
    let conv = conversations(&db.pool, 1).await[0];
    let prefix = unique_prefix();
    let cache = HistoryCache::new(&cache_config(&prefix, REDIS_URL)).unwrap();
    let handler = ChatHandler::new(db.pool.clone(), simulated(0, 0)).with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let mut conn = redis().await;
    let key = cache.key(conv);

    let mut ids = Vec::new();
    let mut stale: Option<Vec<u8>> = None;
    for k in 0..4 {
        if k == 3 {
            // Put back the entry of two turns ago, as if the last two
            // updates had been lost (Redis stalled while they were sent).
            let _: () = deadpool_redis::redis::cmd("SET")
                .arg(&key)
                .arg(stale.clone().unwrap())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let writes = cache.stats().writes;
        let id = enqueue_one(&db.pool, chat_job(conv, &format!("turn {}", k + 1))).await;
        wait_final(&db.pool, &[id], NO_HANG).await;
        eventually(NO_HANG, "turn cached", || async {
            cache.stats().writes > writes
        })
        .await;
        if k == 0 {
            stale = deadpool_redis::redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        ids.push(id);
    }
    worker.stop().await;
    assert_conversations_intact(&db.pool, &[conv], &[ids], |_, k| format!("turn {}", k + 1)).await;
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (2, 1),
        "turns 2 and 3 hit, turn 4 found the stale entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_on_a_closed_port_does_not_stop_the_turns() {
    let db = TestDb::new().await;
    let convs = conversations(&db.pool, 5).await;
    let url = closed_port_url().await.replace("http://", "redis://");
    let cache = HistoryCache::new(&cache_config(&unique_prefix(), &url)).unwrap();
    let handler = ChatHandler::new(db.pool.clone(), simulated(5, 0)).with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let message = |c: usize, k: usize| format!("c{c} t{k}");
    let mut jobs = Vec::new();
    for k in 0..4 {
        for (c, conv) in convs.iter().enumerate() {
            jobs.push(chat_job(*conv, &message(c, k)));
        }
    }
    let ids = enqueue_all(&db.pool, &jobs).await;
    wait_final(&db.pool, &ids, NO_HANG).await;
    worker.stop().await;
    let per_conversation: Vec<Vec<JobId>> = (0..convs.len())
        .map(|c| (0..4).map(|k| ids[k * convs.len() + c]).collect())
        .collect();
    assert_conversations_intact(&db.pool, &convs, &per_conversation, message).await;
    let stats = cache.stats();
    assert_eq!(stats.hits, 0);
    assert!(stats.errors > 0);
    assert!(!cache.is_up());
    assert!(skipjack::metrics::render().contains("skipjack_cache_requests_total{result=\"error\"}"));
}

/// A TCP proxy to Redis that the test can make hang: connections stop
/// being answered (existing ones and new ones), as when Redis is stopped
/// with SIGSTOP or its host drops off the network.
struct RedisProxy {
    url: String,
    hang: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisProxy {
    async fn start() -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (hang, watcher) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(Self::serve(client, watcher.clone()));
            }
        });
        RedisProxy {
            url: format!("redis://{addr}"),
            hang,
            task,
        }
    }

    async fn serve(client: TcpStream, mut hang: watch::Receiver<bool>) {
        let (mut from_client, mut to_client) = client.into_split();
        if !*hang.borrow() {
            let Ok(upstream) = TcpStream::connect("127.0.0.1:6379").await else {
                return;
            };
            let (mut from_redis, mut to_redis) = upstream.into_split();
            tokio::select! {
                _ = tokio::io::copy(&mut from_client, &mut to_redis) => return,
                _ = tokio::io::copy(&mut from_redis, &mut to_client) => return,
                _ = hang.wait_for(|h| *h) => {}
            }
        }
        // Hung: read and drop everything, answer nothing, keep it open.
        let mut buf = [0u8; 4096];
        while matches!(from_client.read(&mut buf).await, Ok(n) if n > 0) {}
        drop(to_client);
    }

    fn set_hung(&self, hung: bool) {
        self.hang.send_replace(hung);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hanging_mid_run_neither_stops_nor_corrupts_the_turns() {
    const CONVERSATIONS: usize = 20;
    const TURNS: usize = 16;
    let db = TestDb::new().await;
    let convs = conversations(&db.pool, CONVERSATIONS).await;
    let proxy = RedisProxy::start().await;
    let cache = HistoryCache::new(&CacheConfig {
        retry_after: Duration::from_millis(100),
        ..cache_config(&unique_prefix(), &proxy.url)
    })
    .unwrap();
    let handler = ChatHandler::new(db.pool.clone(), simulated(50, 10)).with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let message = |c: usize, k: usize| format!("c{c} t{k}");
    let mut jobs = Vec::new();
    for k in 0..TURNS {
        for (c, conv) in convs.iter().enumerate() {
            jobs.push(chat_job(*conv, &message(c, k)));
        }
    }
    let ids = enqueue_all(&db.pool, &jobs).await;
    let finished = |n: i64| {
        let pool = db.pool.clone();
        move || {
            let pool = pool.clone();
            async move { count(&pool, "SELECT count(*) FROM job_history").await >= n }
        }
    };

    // A quarter of the turns with Redis up, a quarter with it hung, the
    // rest after it came back.
    let quarter = (ids.len() / 4) as i64;
    eventually(NO_HANG, "first quarter", finished(quarter)).await;
    let before = cache.stats();
    assert!(before.hits > 0, "the cache served turns before the outage");
    proxy.set_hung(true);
    eventually(NO_HANG, "second quarter", finished(2 * quarter)).await;
    let during = cache.stats();
    assert!(during.errors > before.errors, "the outage was noticed");
    assert!(!cache.is_up());
    proxy.set_hung(false);
    wait_final(&db.pool, &ids, Duration::from_secs(60)).await;
    worker.stop().await;

    let after = cache.stats();
    assert!(cache.is_up(), "back in use after the outage");
    assert!(after.hits > during.hits, "hits again after the outage");
    let per_conversation: Vec<Vec<JobId>> = (0..CONVERSATIONS)
        .map(|c| (0..TURNS).map(|k| ids[k * CONVERSATIONS + c]).collect())
        .collect();
    assert_conversations_intact(&db.pool, &convs, &per_conversation, message).await;
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM job_history WHERE attempts <> 1"
        )
        .await,
        0,
        "Redis trouble never failed an attempt"
    );
}

// ------------------------------------------------------------ history loader

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_loader_reads_a_burst_of_histories_in_few_queries() {
    let db = TestDb::new().await;
    let convs = conversations(&db.pool, 300).await;
    // Conversation i has i % 4 turns.
    let mut jobs = Vec::new();
    let mut texts = Vec::new();
    for (i, conv) in convs.iter().enumerate() {
        for k in 0..i % 4 {
            jobs.push((*conv, JobId::new()));
            texts.push((format!("q{i}.{k}"), format!("a{i}.{k}")));
        }
    }
    let turns: Vec<store::Turn<'_>> = jobs
        .iter()
        .zip(&texts)
        .map(|((conv, job), (q, a))| store::Turn {
            conversation: *conv,
            job: *job,
            user_message: q,
            assistant_message: a,
            user_tokens: None,
            assistant_tokens: None,
        })
        .collect();
    // One turn per conversation per statement, as completions do.
    let mut conn = db.pool.acquire().await.unwrap();
    for k in 0..3 {
        let round: Vec<store::Turn<'_>> = turns
            .iter()
            .filter(|t| t.user_message.ends_with(&format!(".{k}")))
            .cloned()
            .collect();
        store::append_turns(&mut conn, &round).await.unwrap();
    }

    let loader = skipjack::chat::loader::HistoryLoader::spawn(db.pool.clone());
    let reads = convs.iter().map(|c| loader.history(*c));
    let histories = futures_util::future::join_all(reads).await;
    for (i, history) in histories.into_iter().enumerate() {
        let history = history.unwrap();
        let expected: Vec<(String, String)> = (0..i % 4)
            .flat_map(|k| {
                [
                    ("user".to_owned(), format!("q{i}.{k}")),
                    ("assistant".to_owned(), format!("a{i}.{k}")),
                ]
            })
            .collect();
        let got: Vec<(String, String)> = history
            .into_iter()
            .map(|m| (m.role.to_string(), m.content))
            .collect();
        assert_eq!(got, expected, "conversation {i}");
    }
    assert!(
        loader.queries() <= 10,
        "{} queries for 300 histories read at once",
        loader.queries()
    );
}

// ------------------------------------------------------------- killed worker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_chat_turn_is_completed_once_by_another() {
    let db = TestDb::new().await;
    let conv = conversations(&db.pool, 1).await[0];
    let earlier = enqueue_one(&db.pool, chat_job(conv, "first")).await;
    let fast = ChatHandler::new(db.pool.clone(), simulated(0, 0));
    let warmup = Worker::builder(db.pool.clone())
        .register(fast)
        .config(config("warmup"))
        .build()
        .unwrap();
    assert_eq!(warmup.run_once(10).await.unwrap().completed, 1);

    // The doomed worker runs in a runtime of its own, dropped mid-call: no
    // completion, no release, no heartbeat, as if the process was killed.
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
            let handler = ChatHandler::new(pool.clone(), simulated(600_000, 0));
            let worker = Worker::builder(pool)
                .register(handler)
                .config(WorkerConfig {
                    lease: Duration::from_millis(900),
                    ..config("doomed")
                })
                .build()
                .unwrap();
            worker.run(CancellationToken::new()).await.unwrap();
        });
        killed.recv().unwrap();
        rt.shutdown_background();
    });
    let id = enqueue_one(&db.pool, chat_job(conv, "second")).await;
    eventually(NO_HANG, "the doomed worker holds the turn", || async {
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

    let handler = ChatHandler::new(db.pool.clone(), simulated(0, 0));
    let survivor = Running::start(
        db.pool.clone(),
        handler,
        WorkerConfig {
            maintenance: Some(queue::maintenance::MaintenanceConfig {
                rescue_interval: Duration::from_millis(100),
                ..Default::default()
            }),
            ..config("survivor")
        },
    );
    wait_final(&db.pool, &[id], NO_HANG).await;
    survivor.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.attempts, 2);
    assert_eq!(view.worker.as_deref(), Some("survivor"));
    assert_eq!(response(&view), "echo(3): second");
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.as_str(), e.worker.as_deref()))
            .collect::<Vec<_>>(),
        vec![("rescued", Some("doomed"))]
    );
    assert_conversations_intact(&db.pool, &[conv], &[vec![earlier, id]], |_, k| {
        ["first", "second"][k].to_owned()
    })
    .await;
}

// -------------------------------------------------------------------- /ready

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_whether_the_worker_is_claiming() {
    let db = TestDb::new().await;
    let handler = ChatHandler::new(db.pool.clone(), simulated(0, 0));
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let shutdown = CancellationToken::new();
    let check = skipjack::worker::claiming_check(
        worker.worker.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            health::router_with_check(db.pool.clone(), Some(check)),
        )
        .await
        .unwrap();
        drop(db);
    });
    let ready = || async move {
        let response = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["claiming"], true);

    shutdown.cancel();
    worker.stop().await;
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["claiming"], false);
    assert!(body["reason"].as_str().unwrap().contains("shutting down"));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_and_an_error_body_with_nul_bytes_are_stored_not_lost() {
    let db = TestDb::new().await;
    let calls = Arc::new(Mutex::new(0usize));
    let seen = calls.clone();
    let mock = MockServer::start(move |r| {
        let mut calls = seen.lock().unwrap();
        *calls += 1;
        if *calls == 1 {
            // An upstream error body with a NUL: the retried attempt's error
            // is stored in its event.
            Reply::text(503, "overloaded\0\0")
        } else {
            Reply::anthropic_ok(&format!("re: {}\0!", last_content(r)))
        }
    })
    .await;
    let conv = conversations(&db.pool, 1).await[0];
    let handler = ChatHandler::new(db.pool.clone(), provider(&anthropic_config(&mock.url)));
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let id = enqueue_one(&db.pool, chat_job(conv, "hello")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;

    let view = job(&db.pool, id).await;
    assert_eq!(
        (view.state, view.attempts),
        (JobState::Completed, 2),
        "{:?}",
        view.error
    );
    let events = queue::events(&db.pool, id).await.unwrap();
    assert!(
        events[0]
            .error
            .as_deref()
            .unwrap()
            .contains("overloaded\u{FFFD}\u{FFFD}"),
        "{:?}",
        events[0].error
    );
    let reply: String =
        sqlx::query_scalar("SELECT content FROM messages WHERE job_id = $1 AND role = 'assistant'")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reply, "re: hello\u{FFFD}!");
}

// ------------------------------------------------------------ history budget

/// What the LLM should be sent of `conversation`'s stored history under
/// `budget`, from the whole history as the API lists it.
async fn expected_window(
    pool: &PgPool,
    conversation: ConversationId,
    budget: u32,
) -> Vec<(String, String)> {
    let all: Vec<store::HistoryMessage> = store::list_messages(pool, conversation)
        .await
        .unwrap()
        .into_iter()
        .map(|m| store::HistoryMessage {
            role: m.role,
            content: m.content,
        })
        .collect();
    skipjack::chat::history_budget::trim(&all, budget)
        .into_iter()
        .map(|m| (m.role.to_string(), m.content))
        .collect()
}

/// The history query (`sql/chat/histories.sql`) keeps what
/// `history_budget::trim` keeps, for every shape of conversation: no system
/// prompt, a prompt of one to three messages, prompts alone, short and long
/// tails, messages of different lengths; under budgets from below one
/// message to above the whole history; all read in one query, as the loader
/// reads a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_query_keeps_what_the_budget_trim_keeps() {
    let db = TestDb::new().await;
    // (system messages, other messages)
    let shapes = [
        (0, 0),
        (0, 1),
        (0, 7),
        (1, 0),
        (1, 1),
        (1, 12),
        (2, 5),
        (3, 40),
        (2, 0),
    ];
    let convs = conversations(&db.pool, shapes.len()).await;
    for (conv, (system, rest)) in convs.iter().zip(shapes) {
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, role, content)
             SELECT $1, g,
                    CASE WHEN g <= $2 THEN 'system'
                         WHEN (g - $2) % 2 = 1 THEN 'user' ELSE 'assistant' END,
                    format('m%s ', g) || repeat('y', (g * 7) % 23)
             FROM generate_series(1, $2 + $3) AS g",
        )
        .bind(conv)
        .bind(system)
        .bind(rest)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for budget in [1, 3, 8, 20, 45, 100, 1_000, 32_000] {
        let windows = store::histories(&db.pool, &convs, budget).await.unwrap();
        for (conv, shape) in convs.iter().zip(shapes) {
            let got: Vec<(String, String)> = windows
                .get(conv)
                .map(|w| w.messages.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|m| (m.role.to_string(), m.content))
                .collect();
            let expected = expected_window(&db.pool, *conv, budget).await;
            assert_eq!(got, expected, "shape {shape:?}, budget {budget}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_conversation_sends_a_bounded_context_with_the_newest_turns() {
    const BUDGET: u32 = 200;
    let db = TestDb::new().await;
    let conv = conversations(&db.pool, 1).await[0];
    // A system prompt, then 300 turns of about 10 estimated tokens a message:
    // some 6,000 tokens, thirty times the budget.
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, role, content)
         SELECT $1, 1, 'system', 'You are terse.'
         UNION ALL
         SELECT $1, g, CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
                format('message %s ', g) || repeat('x', 26)
         FROM generate_series(2, 601) AS g",
    )
    .bind(conv)
    .execute(&db.pool)
    .await
    .unwrap();
    let mock = MockServer::start(|r| Reply::openai_ok(&format!("re: {}", last_content(r)))).await;
    let tokens = |sent: &[(String, String)]| -> u64 {
        sent.iter()
            .map(|(_, c)| u64::from(llm::estimate_tokens(c)))
            .sum()
    };

    // From Postgres through the loader.
    let handler = ChatHandler::new(db.pool.clone(), provider(&openai_config(&mock.url)))
        .with_history_budget(BUDGET);
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let expected = expected_window(&db.pool, conv, BUDGET).await;
    let first = enqueue_one(&db.pool, chat_job(conv, "newest question")).await;
    wait_final(&db.pool, &[first], NO_HANG).await;
    worker.stop().await;
    let sent = contents(&mock.requests()[0]);
    let (history, current) = sent.split_at(sent.len() - 1);
    assert_eq!(current, [("user".to_owned(), "newest question".to_owned())]);
    assert_eq!(history, expected.as_slice());
    assert_eq!(
        history[0],
        ("system".to_owned(), "You are terse.".to_owned())
    );
    assert_eq!(history[1].0, "user", "the window starts with a question");
    assert!(
        history.last().unwrap().1.starts_with("message 601 "),
        "newest kept"
    );
    assert!(tokens(history) <= u64::from(BUDGET));
    assert!(
        history.len() > 10 && history.len() < 40,
        "{} of 601 messages sent",
        history.len()
    );
    // Consecutive: the newest stored messages, none skipped.
    let seqs: Vec<u32> = history[1..]
        .iter()
        .map(|(_, c)| c.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Through the Redis cache: the miss reads the window from Postgres, the
    // completion caches window + turn cut to the budget again, and the hit
    // that follows serves exactly what Postgres would.
    let cache = HistoryCache::new(&cache_config(&unique_prefix(), REDIS_URL)).unwrap();
    let handler = ChatHandler::new(db.pool.clone(), provider(&openai_config(&mock.url)))
        .with_history_budget(BUDGET)
        .with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    for (k, message) in ["second", "third"].into_iter().enumerate() {
        let expected = expected_window(&db.pool, conv, BUDGET).await;
        let writes = cache.stats().writes;
        let id = enqueue_one(&db.pool, chat_job(conv, message)).await;
        wait_final(&db.pool, &[id], NO_HANG).await;
        let sent = contents(&mock.requests()[1 + k]);
        assert_eq!(
            &sent[..sent.len() - 1],
            expected.as_slice(),
            "turn {message}"
        );
        assert!(tokens(&sent[..sent.len() - 1]) <= u64::from(BUDGET));
        eventually(NO_HANG, "turn cached", || async {
            cache.stats().writes > writes
        })
        .await;
    }
    worker.stop().await;
    assert_eq!(
        cache.stats().hits,
        1,
        "the third turn's history came from Redis"
    );

    // A cache entry cut for another budget is not served to this one.
    let smaller = BUDGET / 2;
    let handler = ChatHandler::new(db.pool.clone(), provider(&openai_config(&mock.url)))
        .with_history_budget(smaller)
        .with_cache(cache.clone());
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let expected = expected_window(&db.pool, conv, smaller).await;
    let id = enqueue_one(&db.pool, chat_job(conv, "fourth")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;
    let sent = contents(&mock.requests()[3]);
    assert_eq!(&sent[..sent.len() - 1], expected.as_slice());
    assert_eq!(cache.stats().hits, 1);

    // The simulated provider's N counts what it was sent: past the budget it
    // stops growing with the conversation.
    let handler = ChatHandler::new(db.pool.clone(), simulated(0, 0)).with_history_budget(BUDGET);
    let worker = Running::start(db.pool.clone(), handler, config("w"));
    let expected = expected_window(&db.pool, conv, BUDGET).await;
    let id = enqueue_one(&db.pool, chat_job(conv, "fifth")).await;
    wait_final(&db.pool, &[id], NO_HANG).await;
    worker.stop().await;
    let turns = expected.iter().filter(|(r, _)| r != "system").count() + 1;
    assert_eq!(
        response(&job(&db.pool, id).await),
        format!("echo({turns}): fifth")
    );
    assert!(turns < 40);
}
