//! Cancelling running jobs and retrying failed or cancelled ones, against a
//! real Postgres: the worker drops a cancelled attempt at once (and with it
//! the call to the provider), stores nothing for it, and the conversation
//! moves on; a cancel racing a completion ends in exactly one state, the
//! one the API answered; manual retries keep the job's id, place and
//! history; and the operator functions behind `skipjack jobs`.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::{count, eventually, TestDb};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skipjack::api::{Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::chat::{store, ChatPayload, CHAT_KIND};
use skipjack::ids::{ConversationId, JobId, TenantId};
use skipjack::llm::{self, LlmConfig, ProviderKind, Secret};
use skipjack::metrics::metrics;
use skipjack::operator::{self, ListArgs};
use skipjack::queue::{self, Backoff, FinishItem, JobState, NewJob, Outcome, QueueError};
use skipjack::tenants;
use skipjack::worker::{Handler, JobContext, Worker, WorkerConfig};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ helpers

/// Sends its job id when dropped: proves the handler's future was dropped.
struct DropGuard(JobId, mpsc::UnboundedSender<JobId>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// Jobs of `kind` whose payload says `"hang": true` wait forever (until
/// their future is dropped); the others complete at once.
#[derive(Clone)]
struct Hanger {
    kind: &'static str,
    started: mpsc::UnboundedSender<JobId>,
    dropped: mpsc::UnboundedSender<JobId>,
}

struct HangerEvents {
    started: mpsc::UnboundedReceiver<JobId>,
    dropped: mpsc::UnboundedReceiver<JobId>,
}

impl Hanger {
    fn new(kind: &'static str) -> (Hanger, HangerEvents) {
        let (started, started_rx) = mpsc::unbounded_channel();
        let (dropped, dropped_rx) = mpsc::unbounded_channel();
        (
            Hanger {
                kind,
                started,
                dropped,
            },
            HangerEvents {
                started: started_rx,
                dropped: dropped_rx,
            },
        )
    }
}

impl Handler for Hanger {
    fn kind(&self) -> &str {
        self.kind
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let id = ctx.job.id;
        if ctx.job.payload["hang"] == json!(true) {
            let _guard = DropGuard(id, self.dropped.clone());
            let _ = self.started.send(id);
            std::future::pending::<()>().await;
        }
        let _ = self.started.send(id);
        Outcome::Completed {
            result: json!({"response": "ok", "model": "test"}),
            usage: None,
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<JobId>, what: &str) -> JobId {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("channel open")
}

fn config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        // Only a NOTIFY can stop an attempt in time: the heartbeat (every
        // lease/3) would take 20 minutes to notice the row is gone.
        lease: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(200),
        maintenance: None,
        queue_gauges: None,
        ..WorkerConfig::default()
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start<H: Handler>(pool: PgPool, handler: H, config: WorkerConfig) -> Running {
        let worker = Worker::builder(pool)
            .register(handler)
            .config(config)
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { worker.run(s).await.unwrap() });
        Running { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

async fn enqueue(pool: &PgPool, job: NewJob) -> JobId {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &job).await.unwrap().id
}

async fn state(pool: &PgPool, id: JobId) -> JobState {
    queue::get(pool, id, None).await.unwrap().unwrap().state
}

async fn wait_state(pool: &PgPool, id: JobId, want: JobState) {
    eventually(WAIT, &format!("job {id} {want}"), || async move {
        state(pool, id).await == want
    })
    .await;
}

async fn history_rows(pool: &PgPool, id: JobId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_history WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn event_names(pool: &PgPool, id: JobId) -> Vec<String> {
    queue::events(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// An API on `db` and the key of a tenant "acme".
struct TestApi {
    api: Option<Api>,
    router: Router,
    shutdown: CancellationToken,
    key: String,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApi {
    async fn new(pool: &PgPool) -> TestApi {
        let shutdown = CancellationToken::new();
        let api = Api::start(pool.clone(), ApiConfig::default(), shutdown.clone());
        let router = api.router();
        let key = new_tenant(pool, "acme").await;
        TestApi {
            api: Some(api),
            router,
            shutdown,
            key,
        }
    }

    async fn call(&self, method: &str, uri: &str, key: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {key}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn submit(&self, user: &str, message: &str) -> JobId {
        let answer = self
            .call(
                "POST",
                "/v1/chat",
                &self.key,
                Some(json!({"user_id": user, "message": message})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        answer.body["job_id"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(api) = self.api.take() {
            tokio::spawn(api.stop());
        }
    }
}

async fn new_tenant(pool: &PgPool, name: &str) -> String {
    tenants::create_tenant_with_key(pool, name, None)
        .await
        .unwrap()
        .secret()
        .to_owned()
}

/// Claims every ready chat job and finishes it with `outcome`.
async fn finish_ready(pool: &PgPool, outcome: &Outcome) -> Vec<JobId> {
    let claimed = queue::claim(pool, "w", 100, Duration::from_secs(60), &["chat".into()])
        .await
        .unwrap();
    let items: Vec<FinishItem> = claimed
        .iter()
        .map(|job| FinishItem {
            job: job.id,
            attempt: job.attempt,
            outcome,
        })
        .collect();
    queue::finish(pool, "w", &items, &Backoff::default())
        .await
        .unwrap();
    claimed.iter().map(|j| j.id).collect()
}

fn failed(error: &str) -> Outcome {
    Outcome::Failed {
        error: error.into(),
    }
}

fn completed() -> Outcome {
    Outcome::Completed {
        result: json!({"response": "ok", "model": "test"}),
        usage: None,
    }
}

// ------------------------------------------------------- cancelling running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_at_once_and_its_conversation_moves_on() {
    let db = TestDb::new().await;
    let (handler, mut events) = Hanger::new("test");
    let conversation = ConversationId::new();
    let a = enqueue(
        &db.pool,
        NewJob::new("test", json!({"hang": true})).with_conversation(conversation),
    )
    .await;
    let b = enqueue(
        &db.pool,
        NewJob::new("test", json!({})).with_conversation(conversation),
    )
    .await;
    let cancelled_before = metrics().worker_jobs_cancelled.get();
    let worker = Running::start(db.pool.clone(), handler, config("w1"));
    assert_eq!(recv(&mut events.started, "a started").await, a);
    assert_eq!(state(&db.pool, a).await, JobState::Processing);

    let was = queue::cancel(&db.pool, a, None, "stop it").await.unwrap();
    assert_eq!(was, JobState::Processing);
    // The worker drops the handler's future (the NOTIFY, not the heartbeat:
    // the lease is an hour long).
    assert_eq!(recv(&mut events.dropped, "a dropped").await, a);
    // The conversation moves on.
    wait_state(&db.pool, b, JobState::Completed).await;
    eventually(WAIT, "the cancel counted", || async {
        metrics().worker_jobs_cancelled.get() > cancelled_before
    })
    .await;
    worker.stop().await;

    let view = queue::get(&db.pool, a, None).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Cancelled);
    assert_eq!(view.attempts, 1);
    assert_eq!(view.error.as_deref(), Some("stop it"));
    assert_eq!(view.worker.as_deref(), Some("w1"));
    assert_eq!(history_rows(&db.pool, a).await, 1);
    assert_eq!(event_names(&db.pool, a).await, vec!["cancelled"]);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT coalesce(sum(live_jobs), 0) FROM conversation_queues"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_a_job_the_worker_does_not_run_is_harmless() {
    let db = TestDb::new().await;
    let (handler, mut events) = Hanger::new("test");
    let a = enqueue(&db.pool, NewJob::new("test", json!({"hang": true}))).await;
    let b = enqueue(&db.pool, NewJob::new("test", json!({"hang": true}))).await;
    let worker = Running::start(db.pool.clone(), handler, config("w1"));
    let mut started = vec![
        recv(&mut events.started, "started").await,
        recv(&mut events.started, "started").await,
    ];
    started.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(started, both);

    // Notifications naming no job of this worker, or nothing at all.
    for payload in [
        JobId::new().to_string(),
        "not a uuid".to_owned(),
        String::new(),
    ] {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(queue::CANCEL_CHANNEL)
            .bind(payload)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    // Cancelling a job that is not processing sends none: a queued one.
    let queued = enqueue(&db.pool, NewJob::new("other", json!({}))).await;
    assert_eq!(
        queue::cancel(&db.pool, queued, None, "x").await.unwrap(),
        JobState::Queued
    );
    // Then a real one for b: notifications arrive in order, so once b is
    // dropped the ones before it were handled, and a is untouched.
    queue::cancel(&db.pool, b, None, "stop b").await.unwrap();
    assert_eq!(recv(&mut events.dropped, "b dropped").await, b);
    assert!(events.dropped.try_recv().is_err(), "a was dropped too");
    assert_eq!(state(&db.pool, a).await, JobState::Processing);

    queue::cancel(&db.pool, a, None, "cleanup").await.unwrap();
    assert_eq!(recv(&mut events.dropped, "a dropped").await, a);
    worker.stop().await;
}

/// An OpenAI-compatible upstream that never answers the first request, and
/// reports when the client drops that connection; later requests get a
/// reply at once.
struct HangingUpstream {
    url: String,
    dropped: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingUpstream {
    async fn start() -> HangingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, dropped) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((stream, _)) = listener.accept().await {
                let hang = std::mem::replace(&mut first, false);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if hang {
                        Self::hang(stream, tx).await
                    } else {
                        Self::answer(stream).await
                    }
                });
            }
        });
        HangingUpstream { url, dropped, task }
    }

    /// Reads the request and whatever follows until the client closes.
    async fn hang(mut stream: TcpStream, dropped: mpsc::UnboundedSender<()>) {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = dropped.send(());
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    async fn answer(mut stream: TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then a body of Content-Length bytes.
        let body_len = loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                break end + 4 + len;
            }
        };
        while request.len() < body_len {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let body = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "second answer"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

impl Drop for HangingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_chat_turn_drops_its_provider_call_and_stores_no_turn() {
    let db = TestDb::new().await;
    let mut upstream = HangingUpstream::start().await;
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'chat')")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    let (conversation, _, _) = store::create_conversation(&db.pool, tenant, "user")
        .await
        .unwrap();
    let chat = |message: &str| {
        let payload = ChatPayload {
            user_id: "user".into(),
            message: message.into(),
            metadata: None,
            stream: false,
        };
        NewJob::new(CHAT_KIND, serde_json::to_value(payload).unwrap())
            .with_tenant(tenant)
            .with_conversation(conversation)
    };
    let first = enqueue(&db.pool, chat("first")).await;
    let second = enqueue(&db.pool, chat("second")).await;
    let provider = llm::build_provider(&LlmConfig {
        provider: ProviderKind::Openai,
        base_url: Some(upstream.url.clone()),
        model: Some("gpt-test".into()),
        openai_api_key: Some(Secret::new("sk-test")),
        timeout_seconds: 3600.0,
        ..LlmConfig::default()
    })
    .unwrap();
    let handler = ChatHandler::new(db.pool.clone(), provider);
    let worker = Running::start(db.pool.clone(), handler, config("chat-w"));
    wait_state(&db.pool, first, JobState::Processing).await;

    // Cancelled through the API, as a client would.
    let api = TestApi::new(&db.pool).await;
    let owner_key = tenants::create_key(&db.pool, tenant).await.unwrap();
    let answer = api
        .call(
            "DELETE",
            &format!("/v1/chat/{first}"),
            owner_key.secret(),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "cancelled");

    // The worker aborted the provider call: the upstream saw its connection
    // dropped (the request timeout is an hour).
    tokio::time::timeout(WAIT, upstream.dropped.recv())
        .await
        .expect("the provider call was not aborted")
        .unwrap();
    wait_state(&db.pool, second, JobState::Completed).await;
    worker.stop().await;

    let turns: Vec<(String, String, Option<JobId>)> = store::list_messages(&db.pool, conversation)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.role.to_string(), m.content, m.job_id))
        .collect();
    assert_eq!(
        turns,
        vec![
            ("user".to_owned(), "second".to_owned(), Some(second)),
            (
                "assistant".to_owned(),
                "second answer".to_owned(),
                Some(second)
            ),
        ],
        "no turn for the cancelled job"
    );
    assert_eq!(state(&db.pool, first).await, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_completion_ends_in_one_state_and_answers_it() {
    let db = TestDb::new().await;
    let api = TestApi::new(&db.pool).await;
    let (handler, _events) = Hanger::new(CHAT_KIND);
    let worker = Running::start(
        db.pool.clone(),
        handler,
        WorkerConfig {
            concurrency: 20,
            ..config("race-w")
        },
    );
    let api = Arc::new(api);
    let mut tasks = Vec::new();
    for i in 0..120 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            // A few users, so conversations have queued, blocked and
            // running jobs when the cancels arrive.
            let id = api.submit(&format!("user-{}", i % 40), "hi").await;
            // Staggered, so that cancels find jobs queued, blocked,
            // running, being completed and completed.
            tokio::time::sleep(Duration::from_millis(
                (i * 7) % 100 + (i % 4 == 0) as u64 * 300,
            ))
            .await;
            let answer = api
                .call("DELETE", &format!("/v1/chat/{id}"), &api.key, None)
                .await;
            (id, answer)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let ids: Vec<JobId> = answers.iter().map(|(id, _)| *id).collect();
    eventually(WAIT, "every job finished", || {
        let ids = ids.clone();
        let pool = db.pool.clone();
        async move {
            let finished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job_history WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            finished as usize == ids.len()
        }
    })
    .await;
    worker.stop().await;

    let (mut cancelled, mut completed) = (0, 0);
    for (id, answer) in &answers {
        assert_eq!(history_rows(&db.pool, *id).await, 1, "one final row");
        let stored = state(&db.pool, *id).await;
        match answer.status {
            StatusCode::OK => {
                assert_eq!(answer.body["status"], "cancelled");
                assert_eq!(stored, JobState::Cancelled);
                cancelled += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(answer.code(), "not_cancellable");
                assert_eq!(stored, JobState::Completed);
                let message = answer.body["error"]["message"].as_str().unwrap();
                assert!(message.contains("completed"), "{message}");
                completed += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    let running = count(
        &db.pool,
        "SELECT count(*) FROM job_history WHERE state = 'cancelled' AND worker IS NOT NULL",
    )
    .await;
    eprintln!("race: {cancelled} cancelled ({running} while running), {completed} completed");
    assert_eq!(cancelled + completed, answers.len());
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT coalesce(sum(live_jobs), 0) FROM conversation_queues"
        )
        .await,
        0
    );
}

// ----------------------------------------------------------------- retrying

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried_with_its_id_and_history_and_completes() {
    let db = TestDb::new().await;
    let api = TestApi::new(&db.pool).await;
    let other = new_tenant(&db.pool, "other").await;
    let id = api.submit("alice", "hello").await;
    assert_eq!(
        finish_ready(&db.pool, &failed("upstream said no")).await,
        [id]
    );
    let before = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!((before.state, before.attempts), (JobState::Failed, 1));

    // Another tenant's job does not exist for it.
    let answer = api
        .call("POST", &format!("/v1/chat/{id}/retry"), &other, None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = api
        .call(
            "POST",
            &format!("/v1/chat/{}/retry", JobId::new()),
            &api.key,
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    let answer = api
        .call("POST", &format!("/v1/chat/{id}/retry"), &api.key, None)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["job_id"], id.to_string());
    assert_eq!(answer.body["status"], "queued");
    assert_eq!(answer.body["attempts"], 1);
    let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!(view.max_attempts, 1 + before.max_attempts, "a fresh budget");
    assert_eq!(view.created_at, before.created_at);
    assert_eq!(history_rows(&db.pool, id).await, 0);
    // Live now: a second retry is refused with its state.
    let again = api
        .call("POST", &format!("/v1/chat/{id}/retry"), &api.key, None)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "not_retryable");
    assert!(again.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queued"));

    // It runs again as attempt 2, under the same id, and completes.
    assert_eq!(finish_ready(&db.pool, &completed()).await, [id]);
    let done = queue::get(&db.pool, id, None).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Completed, 2));
    assert_eq!(done.started_at, before.started_at);
    let events = queue::events(&db.pool, id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "retried");
    assert_eq!(events[0].worker.as_deref(), Some("manual"));
    assert_eq!(events[0].attempt, 1);
    assert_eq!(events[0].error.as_deref(), Some("upstream said no"));
    // A completed job is not retried.
    let answer = api
        .call("POST", &format!("/v1/chat/{id}/retry"), &api.key, None)
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.code(), "not_retryable");
    assert_eq!(
        count(
            &db.pool,
            "SELECT coalesce(sum(live_jobs), 0) FROM conversation_queues"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_the_job_s_place_and_is_refused_once_the_conversation_moved_on() {
    let db = TestDb::new().await;
    let api = TestApi::new(&db.pool).await;
    // alice: a then b in her default conversation.
    let a = api.submit("alice", "one").await;
    let b = api.submit("alice", "two").await;
    assert_eq!(finish_ready(&db.pool, &failed("boom")).await, [a]);
    // b is live: a cannot come back behind it.
    let answer = api
        .call("POST", &format!("/v1/chat/{a}/retry"), &api.key, None)
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.code(), "conversation_moved_on");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("later job"));
    // Nor once b has finished.
    assert_eq!(finish_ready(&db.pool, &completed()).await, [b]);
    let answer = api
        .call("POST", &format!("/v1/chat/{a}/retry"), &api.key, None)
        .await;
    assert_eq!(answer.code(), "conversation_moved_on");
    assert_eq!(state(&db.pool, a).await, JobState::Failed);

    // bob: a cancelled last turn comes back as the head of his
    // conversation; a turn submitted after it waits for it.
    let c = api.submit("bob", "three").await;
    let cancel = api
        .call("DELETE", &format!("/v1/chat/{c}"), &api.key, None)
        .await;
    assert_eq!(cancel.status, StatusCode::OK);
    let answer = api
        .call("POST", &format!("/v1/chat/{c}/retry"), &api.key, None)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let d = api.submit("bob", "four").await;
    let blocked: bool = sqlx::query_scalar("SELECT blocked FROM jobs WHERE id = $1")
        .bind(d)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(blocked, "the turn after the retried one waits for it");
    assert_eq!(finish_ready(&db.pool, &completed()).await, [c]);
    assert_eq!(finish_ready(&db.pool, &completed()).await, [d]);
    assert_eq!(event_names(&db.pool, c).await, ["cancelled", "retried"]);
    assert_eq!(
        count(
            &db.pool,
            "SELECT coalesce(sum(live_jobs), 0) FROM conversation_queues"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn each_manual_retry_gives_the_original_budget_again() {
    let db = TestDb::new().await;
    let id = enqueue(
        &db.pool,
        NewJob::new("chat", json!({})).with_max_attempts(2),
    )
    .await;
    for round in 1..=3 {
        // Use up the budget: a retryable error each time.
        for _ in 0..2 {
            let claimed = queue::claim(&db.pool, "w", 1, Duration::from_secs(60), &["chat".into()])
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            let outcome = Outcome::Retry {
                error: "again".into(),
                retry_after: None,
            };
            let item = FinishItem {
                job: id,
                attempt: claimed[0].attempt,
                outcome: &outcome,
            };
            queue::finish(
                &db.pool,
                "w",
                &[item],
                &Backoff {
                    base: Duration::ZERO,
                    max: Duration::ZERO,
                },
            )
            .await
            .unwrap();
        }
        let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
        assert_eq!(
            (view.state, view.attempts, view.max_attempts),
            (JobState::Failed, 2 * round, 2 * round)
        );
        queue::retry(&db.pool, id, None).await.unwrap();
    }
    // A tenant's retry of a job without a tenant: not found.
    assert!(matches!(
        queue::retry(&db.pool, id, Some(TenantId::new())).await,
        Err(QueueError::NotFound(_))
    ));
}

// --------------------------------------------------------------- operators

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_functions_list_show_retry_and_cancel() {
    let db = TestDb::new().await;
    let api = TestApi::new(&db.pool).await;
    let x = api.submit("x", "one").await;
    let y = api.submit("y", "one").await;
    let y2 = api.submit("y", "two").await;
    let z = api.submit("z", "one").await;
    // x and y fail; y's conversation has y2 after it; z completes.
    let claimed = queue::claim(&db.pool, "w", 10, Duration::from_secs(60), &["chat".into()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let fail = failed("provider down");
    let done = completed();
    let items: Vec<FinishItem> = claimed
        .iter()
        .map(|j| FinishItem {
            job: j.id,
            attempt: j.attempt,
            outcome: if j.id == z { &done } else { &fail },
        })
        .collect();
    queue::finish(&db.pool, "w", &items, &Backoff::default())
        .await
        .unwrap();

    let listed = operator::list(
        &db.pool,
        &ListArgs {
            state: Some(JobState::Failed),
            tenant: Some("acme".into()),
            since: Some(operator::parse_duration("1h").unwrap()),
            limit: 10,
        },
    )
    .await
    .unwrap();
    let mut failed_ids: Vec<JobId> = listed.iter().map(|j| j.id).collect();
    failed_ids.sort();
    let mut want = vec![x, y];
    want.sort();
    assert_eq!(failed_ids, want);
    assert!(
        listed[0].finished_at >= listed[1].finished_at,
        "newest first"
    );
    assert!(operator::list_text(&listed).contains("provider down"));
    // Another tenant has none; an unknown tenant is an error.
    new_tenant(&db.pool, "empty").await;
    let none = operator::list(
        &db.pool,
        &ListArgs {
            state: Some(JobState::Failed),
            tenant: Some("empty".into()),
            since: None,
            limit: 10,
        },
    )
    .await
    .unwrap();
    assert!(none.is_empty());
    assert!(operator::list(
        &db.pool,
        &ListArgs {
            tenant: Some("nobody".into()),
            limit: 10,
            ..Default::default()
        }
    )
    .await
    .is_err());

    // Bulk retry: x comes back, y is refused (y2 came after it).
    let report = operator::retry_failed_since(
        &db.pool,
        operator::parse_duration("1h").unwrap(),
        Some("acme"),
        100,
    )
    .await
    .unwrap();
    assert_eq!(report.done, vec![x]);
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].id, y);
    assert_eq!(report.refused[0].code, "conversation_moved_on");
    let text = report.text("retried");
    assert!(text.contains(&format!("retried {x}")), "{text}");
    assert!(text.contains("1 retried, 1 refused"), "{text}");

    // By id: a completed job and an unknown one are refused.
    let unknown = JobId::new();
    let report = operator::retry(&db.pool, &[z, unknown]).await.unwrap();
    assert!(report.done.is_empty());
    let codes: Vec<&str> = report.refused.iter().map(|r| r.code).collect();
    assert_eq!(codes, ["not_retryable", "not_found"]);

    // Show: the state, attempts and events.
    let detail = operator::show(&db.pool, x).await.unwrap().unwrap();
    assert_eq!(detail.job.state, JobState::Queued);
    assert_eq!(detail.events.len(), 1);
    let text = detail.text();
    assert!(
        text.contains("retried attempt 1 (manual): provider down"),
        "{text}"
    );
    assert!(operator::show(&db.pool, unknown).await.unwrap().is_none());

    // Cancel: the retried x (queued) and y2 (queued) go, z is refused.
    let report = operator::cancel(&db.pool, &[x, y2, z], "operator")
        .await
        .unwrap();
    assert_eq!(report.done, vec![x, y2]);
    assert_eq!(report.refused[0].code, "not_cancellable");
    assert_eq!(state(&db.pool, x).await, JobState::Cancelled);
}

/// Runs `skipjack ARGS` against `db`; (exit success, stdout).
async fn cli(db: &TestDb, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_cli_lists_shows_retries_and_cancels() {
    let db = TestDb::new().await;
    let api = TestApi::new(&db.pool).await;
    let a = api.submit("a", "one").await;
    let b = api.submit("b", "one").await;
    assert_eq!(finish_ready(&db.pool, &failed("outage")).await.len(), 2);

    let (ok, out) = cli(
        &db,
        &[
            "jobs", "list", "--state", "failed", "--since", "1h", "--tenant", "acme",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(&a.to_string()) && out.contains("outage"),
        "{out}"
    );
    let (ok, out) = cli(&db, &["jobs", "list", "--state", "failed", "--json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let (ok, out) = cli(&db, &["jobs", "retry", &a.to_string()]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("retried {a}")), "{out}");
    // a is live again: only b is still failed.
    let (ok, out) = cli(&db, &["jobs", "retry", "--failed-since", "1h"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("retried {b}")), "{out}");
    assert!(out.contains("1 retried, 0 refused"), "{out}");
    // A refusal is printed, and exits 1.
    let (ok, out) = cli(&db, &["jobs", "retry", &a.to_string()]).await;
    assert!(!ok);
    assert!(out.contains("not_retryable"), "{out}");

    let (ok, out) = cli(&db, &["jobs", "show", &a.to_string(), "--json"]).await;
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["job"]["state"], "queued");
    assert_eq!(shown["events"][0]["event"], "retried");

    let (ok, out) = cli(&db, &["jobs", "cancel", &a.to_string(), &b.to_string()]).await;
    assert!(ok, "{out}");
    assert!(out.contains("2 cancelled, 0 refused"), "{out}");
    let (ok, out) = cli(&db, &["jobs", "show", &a.to_string()]).await;
    assert!(ok);
    assert!(out.contains("cancelled"), "{out}");
    assert!(!cli(&db, &["jobs", "list", "--since", "soon"]).await.0);
}
