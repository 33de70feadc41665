//! Streamed replies end to end: `POST /v1/chat` with `"stream": true`, a
//! worker publishing the provider's pieces, and `GET /v1/chat/{id}/stream`
//! served by the API as Server-Sent Events (docs/streaming.md), against a
//! real Postgres; the providers' own streaming against a local mock server.

mod common;
#[allow(dead_code)]
mod common_llm;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::TestDb;
use common_llm::{MockServer, Reply};
use eventsource_stream::Eventsource;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use skipjack::api::{Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::llm::{
    self, ChatRequest, ChatResponse, ErrorClass, LlmConfig, LlmError, OnDelta, Provider,
    ProviderKind, Secret, Usage,
};
use skipjack::queue::{self, Backoff};
use skipjack::stream::{Publisher, PublisherConfig};
use skipjack::tenants;
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Longest any single event may take before the test gives up (a hang
/// guard, not a latency claim).
const HANG: Duration = Duration::from_secs(30);

/// One event as a client sees it.
#[derive(Clone, Debug)]
struct Ev {
    event: String,
    id: String,
    data: Value,
}

type Events = Pin<Box<dyn Stream<Item = Ev> + Send>>;

/// The API, with a tenant key.
struct App {
    router: Router,
    key: String,
    pool: PgPool,
    _api: Api,
    stop: CancellationToken,
}

impl App {
    async fn start(db: &TestDb) -> App {
        let key = tenants::create_tenant_with_key(&db.pool, "acme", None)
            .await
            .unwrap()
            .secret()
            .to_owned();
        let stop = CancellationToken::new();
        let api = Api::start(db.pool.clone(), ApiConfig::default(), stop.clone());
        App {
            router: api.router(),
            key,
            pool: db.pool.clone(),
            _api: api,
            stop,
        }
    }

    /// Submits `message` as user `ann`'s (the default conversation).
    async fn submit(&self, message: &str, stream: bool) -> String {
        self.submit_as("ann", message, stream).await
    }

    async fn submit_as(&self, user: &str, message: &str, stream: bool) -> String {
        let body = json!({"user_id": user, "message": message, "stream": stream});
        let request = Request::post("/v1/chat")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        body["job_id"].as_str().unwrap().to_owned()
    }

    async fn open(&self, id: &str, last_event_id: Option<&str>) -> (StatusCode, Events) {
        let mut request = Request::get(format!("/v1/chat/{id}/stream"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let events = response
            .into_body()
            .into_data_stream()
            .eventsource()
            .map(|e| {
                let e = e.expect("a well-formed event stream");
                Ev {
                    event: e.event,
                    id: e.id,
                    data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
                }
            });
        (status, Box::pin(events))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The next event, or `None` when the stream ended.
async fn next(events: &mut Events) -> Option<Ev> {
    tokio::time::timeout(HANG, events.next())
        .await
        .expect("an event within the hang guard")
}

/// Every event until the stream ends.
async fn rest(events: &mut Events) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(e) = next(events).await {
        out.push(e);
    }
    out
}

/// The text of the last attempt's deltas.
fn text_of(events: &[Ev]) -> String {
    let mut text = String::new();
    for e in events {
        match e.event.as_str() {
            "restarted" => text.clear(),
            "delta" => text.push_str(e.data["text"].as_str().unwrap()),
            _ => {}
        }
    }
    text
}

/// `ATTEMPT.SEQ` ids strictly increase, then `end` comes last.
fn assert_ids_increase(events: &[Ev]) {
    let mut last = (-1i64, -1i64);
    for (i, e) in events.iter().enumerate() {
        if e.id == "end" {
            assert_eq!(
                i,
                events.len() - 1,
                "the final event is the last: {events:?}"
            );
            continue;
        }
        let (a, s) = e.id.split_once('.').expect("ATTEMPT.SEQ");
        let at = (a.parse().unwrap(), s.parse().unwrap());
        assert!(
            at > last,
            "ids increase: {last:?} then {at:?} in {events:?}"
        );
        last = at;
    }
}

/// A chat worker with a stream publisher, running until the token is
/// cancelled.
fn start_worker(
    pool: &PgPool,
    provider: Arc<dyn Provider>,
    id: &str,
) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let (publisher, publisher_task) = Publisher::spawn(
        pool.clone(),
        PublisherConfig {
            flush_interval: Duration::from_millis(20),
            ..PublisherConfig::default()
        },
        stop.clone(),
    );
    let worker = Worker::builder(pool.clone())
        .register(ChatHandler::new(pool.clone(), provider).with_stream_publisher(publisher))
        .config(WorkerConfig {
            id: id.to_owned(),
            concurrency: 50,
            poll_interval: Duration::from_millis(100),
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
            maintenance: None,
            queue_gauges: None,
            ..WorkerConfig::default()
        })
        .build()
        .unwrap();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        worker.run(token).await.unwrap();
        let _ = publisher_task.await;
    });
    (stop, task)
}

fn simulated(latency_ms: u64, chunks: u32) -> Arc<dyn Provider> {
    llm::build_provider(&LlmConfig {
        simulated_latency_ms: latency_ms,
        simulated_jitter_ms: Some(0),
        simulated_chunks: chunks,
        ..LlmConfig::default()
    })
    .unwrap()
}

// ------------------------------------------------------------------ the API

#[tokio::test]
async fn a_streamed_reply_arrives_in_order_and_equals_the_stored_reply() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let id = app.submit("hello stream", true).await;
    let (status, mut events) = app.open(&id, None).await;
    assert_eq!(status, StatusCode::OK);
    let (stop, worker) = start_worker(&db.pool, simulated(400, 8), "w1");

    let events = rest(&mut events).await;
    stop.cancel();
    worker.await.unwrap();

    assert_eq!(events[0].event, "queued", "{events:?}");
    assert_eq!(events[0].data["status"], "queued");
    assert_eq!(events[1].event, "started", "{events:?}");
    let deltas = events.iter().filter(|e| e.event == "delta").count();
    assert_eq!(deltas, 8, "every piece, each once: {events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.event, "completed");
    assert_eq!(last.id, "end");
    assert_eq!(last.data["response"], "echo(1): hello stream");
    assert_eq!(text_of(&events), "echo(1): hello stream");
    assert_ids_increase(&events);
    // The stored reply is the one the stream delivered.
    let (role, content): (String, String) = sqlx::query_as(
        "SELECT role, content FROM messages WHERE job_id = $1 AND role = 'assistant'",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (role.as_str(), content.as_str()),
        ("assistant", "echo(1): hello stream")
    );
}

#[tokio::test]
async fn resuming_on_another_replica_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let id = app.submit("one two three four five six", true).await;
    let (stop, worker) = start_worker(&db.pool, simulated(600, 6), "w1");

    // Read up to the second piece, then drop the connection.
    let (_, mut events) = app.open(&id, None).await;
    let mut first = Vec::new();
    while first.iter().filter(|e: &&Ev| e.event == "delta").count() < 2 {
        first.push(next(&mut events).await.expect("more events"));
    }
    drop(events);
    let last_id = first.last().unwrap().id.clone();

    // Any replica serves any stream: resume on a second API process.
    let replica = Api::start(db.pool.clone(), ApiConfig::default(), app.stop.clone());
    let other = App {
        router: replica.router(),
        key: app.key.clone(),
        pool: db.pool.clone(),
        _api: replica,
        stop: app.stop.clone(),
    };
    let (status, mut events) = other.open(&id, Some(&last_id)).await;
    assert_eq!(status, StatusCode::OK);
    let second = rest(&mut events).await;
    stop.cancel();
    worker.await.unwrap();

    assert!(
        second
            .iter()
            .all(|e| e.event != "queued" && e.event != "started"),
        "a resumed stream does not start over: {second:?}"
    );
    let all: Vec<Ev> = first.into_iter().chain(second).collect();
    assert_ids_increase(&all);
    assert_eq!(all.last().unwrap().event, "completed");
    assert_eq!(text_of(&all), "echo(1): one two three four five six");
    assert_eq!(all.iter().filter(|e| e.event == "delta").count(), 6);

    // After the end, resuming from the middle gives the missed pieces
    // (still kept) and the final event.
    let (_, mut events) = app.open(&id, Some("1.4")).await;
    let tail = rest(&mut events).await;
    assert_eq!(
        tail.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["1.5", "1.6", "end"]
    );
}

#[tokio::test]
async fn a_finished_job_gets_its_final_event_at_once_and_bad_requests_are_refused() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let id = app.submit("not streamed", false).await;
    let (stop, worker) = start_worker(&db.pool, simulated(0, 4), "w1");
    let (_, mut events) = app.open(&id, None).await;
    let live = rest(&mut events).await;
    // Not submitted for streaming: life-cycle events and the whole reply.
    assert!(live.iter().all(|e| e.event != "delta"), "{live:?}");
    assert_eq!(
        live.last().unwrap().data["response"],
        "echo(1): not streamed"
    );
    stop.cancel();
    worker.await.unwrap();

    let (status, mut events) = app.open(&id, None).await;
    assert_eq!(status, StatusCode::OK);
    let after = rest(&mut events).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].event, "completed");
    assert_eq!(after[0].data["response"], "echo(1): not streamed");

    let (status, _) = app.open(&id, Some("not-an-id")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app.open(&uuid::Uuid::now_v7().to_string(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Another tenant's job is not found either.
    let other = tenants::create_tenant_with_key(&app.pool, "other", None)
        .await
        .unwrap()
        .secret()
        .to_owned();
    let request = Request::get(format!("/v1/chat/{id}/stream"))
        .header(header::AUTHORIZATION, format!("Bearer {other}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Streams "partial " then, once that piece is stored, fails (retryably)
/// on its first call; streams the whole reply on later calls.
struct FailsMidStreamOnce {
    calls: AtomicUsize,
    pool: PgPool,
}

impl Provider for FailsMidStreamOnce {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        unreachable!("chat jobs that ask for streaming stream")
    }

    fn chat_stream<'a>(
        &'a self,
        _: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                on_delta("partial ");
                common::eventually(
                    Duration::from_secs(60),
                    "the first piece stored",
                    || async {
                        common::count(&self.pool, "SELECT count(*) FROM stream_deltas").await > 0
                    },
                )
                .await;
                return Err(LlmError::retryable(ErrorClass::Server, "broke mid-stream"));
            }
            for piece in ["the ", "whole ", "reply"] {
                on_delta(piece);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Ok(ChatResponse {
                content: "the whole reply".into(),
                usage: Usage::default(),
                model: "flaky".into(),
            })
        })
    }
}

#[tokio::test]
async fn a_provider_failing_mid_stream_shows_as_restarted_never_as_a_mix() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let id = app.submit("hi", true).await;
    let (_, mut events) = app.open(&id, None).await;
    let provider = Arc::new(FailsMidStreamOnce {
        calls: AtomicUsize::new(0),
        pool: db.pool.clone(),
    });
    let (stop, worker) = start_worker(&db.pool, provider, "w1");
    let events = rest(&mut events).await;
    stop.cancel();
    worker.await.unwrap();

    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "queued",
            "started",
            "delta",
            "restarted",
            "delta",
            "delta",
            "delta",
            "completed"
        ],
        "{events:?}"
    );
    assert_eq!(events[3].data, json!({"attempt": 2, "previous_attempt": 1}));
    assert_eq!(events[2].data["text"], "partial ");
    assert_eq!(text_of(&events), "the whole reply");
    assert_eq!(events.last().unwrap().data["response"], "the whole reply");
    assert_ids_increase(&events);
}

/// Streams one piece, then never answers: a worker that will die.
struct HangsAfterOnePiece;

impl Provider for HangsAfterOnePiece {
    fn name(&self) -> &'static str {
        "hangs"
    }

    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(std::future::pending())
    }

    fn chat_stream<'a>(
        &'a self,
        _: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            on_delta("doomed ");
            std::future::pending().await
        })
    }
}

#[tokio::test]
async fn a_worker_dying_mid_stream_is_followed_by_the_retry_as_restarted() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let id = app.submit("survive this", true).await;
    let (_, mut events) = app.open(&id, None).await;
    let (_, doomed) = start_worker(&db.pool, Arc::new(HangsAfterOnePiece), "doomed");

    let mut seen = Vec::new();
    while seen.iter().all(|e: &Ev| e.event != "delta") {
        seen.push(next(&mut events).await.expect("more events"));
    }
    // The worker dies: no release, no heartbeat. Its lease is made to
    // expire now rather than waited out, and the rescuer takes the job back.
    doomed.abort();
    let _ = doomed.await;
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    let rescued = queue::rescue(&db.pool, 10).await.unwrap();
    assert_eq!(rescued.requeued.len(), 1, "{rescued:?}");

    let (stop, worker) = start_worker(&db.pool, simulated(100, 3), "survivor");
    seen.extend(rest(&mut events).await);
    stop.cancel();
    worker.await.unwrap();

    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "queued",
            "started",
            "delta",
            "restarted",
            "delta",
            "delta",
            "delta",
            "completed"
        ],
        "{seen:?}"
    );
    assert_eq!(text_of(&seen), "echo(1): survive this");
    assert_eq!(seen.last().unwrap().data["attempts"], 2);
    assert_ids_increase(&seen);
}

#[tokio::test]
async fn many_streams_share_each_read() {
    let db = TestDb::new().await;
    let app = App::start(&db).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let id = app
            .submit_as(&format!("user-{i}"), &format!("message number {i}"), true)
            .await;
        streams.push((i, app.open(&id, None).await.1));
    }
    let reads_before = app._api.state().stream_hub.reads();
    let (stop, worker) = start_worker(&db.pool, simulated(300, 10), "w1");
    let mut pieces = 0;
    for (i, mut events) in streams {
        let events = rest(&mut events).await;
        assert_eq!(text_of(&events), format!("echo(1): message number {i}"));
        pieces += events.iter().filter(|e| e.event == "delta").count();
    }
    stop.cancel();
    worker.await.unwrap();
    let reads = app._api.state().stream_hub.reads() - reads_before;
    assert_eq!(pieces, 200);
    // One read serves every open stream: far fewer reads than pieces.
    assert!(
        reads * 4 < pieces as u64,
        "{reads} reads for {pieces} pieces"
    );
}

// ------------------------------------------------------------ the providers

fn sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| {
            if name.is_empty() {
                format!("data: {data}\n\n")
            } else {
                format!("event: {name}\ndata: {data}\n\n")
            }
        })
        .collect()
}

fn stream_reply(body: String) -> Reply {
    Reply::text(200, &body).header("content-type", "text/event-stream")
}

async fn collect(provider: &dyn Provider) -> (Vec<String>, Result<ChatResponse, LlmError>) {
    let pieces = std::sync::Mutex::new(Vec::new());
    let on_delta = |p: &str| pieces.lock().unwrap().push(p.to_owned());
    let req = ChatRequest {
        system: None,
        messages: vec![llm::ChatMessage::user("hi")],
    };
    let result = provider.chat_stream(&req, &on_delta).await;
    (pieces.into_inner().unwrap(), result)
}

fn openai(url: &str) -> Arc<dyn Provider> {
    llm::build_provider(&LlmConfig {
        provider: ProviderKind::Openai,
        base_url: Some(format!("{url}/v1")),
        model: Some("gpt-test".into()),
        openai_api_key: Some(Secret::new("sk-openai-test")),
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    })
    .unwrap()
}

fn anthropic(url: &str) -> Arc<dyn Provider> {
    llm::build_provider(&LlmConfig {
        provider: ProviderKind::Anthropic,
        base_url: Some(url.to_owned()),
        model: Some("claude-test".into()),
        anthropic_api_key: Some(Secret::new("sk-ant-test")),
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn openai_compatible_streams_are_read_piece_by_piece() {
    let chunk = |content: &str| json!({"model": "gpt-mock", "choices": [{"index": 0, "delta": {"content": content}}]});
    let body = sse(&[
        (
            "",
            json!({"model": "gpt-mock", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        ),
        ("", chunk("Hel")),
        ("", chunk("lo")),
        ("", chunk(" there")),
        (
            "",
            json!({"model": "gpt-mock", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}),
        ),
    ]) + "data: [DONE]\n\n";
    let mock = MockServer::start(move |_| stream_reply(body.clone())).await;
    let (pieces, result) = collect(openai(&mock.url).as_ref()).await;
    let response = result.unwrap();
    assert_eq!(pieces, ["Hel", "lo", " there"]);
    assert_eq!(response.content, "Hello there");
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (9, 3)
    );
    assert_eq!(response.model, "gpt-mock");
    let sent = &mock.requests()[0].body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // A stream cut before [DONE] is a broken connection: retryable.
    let cut = sse(&[("", chunk("Hel"))]);
    let mock = MockServer::start(move |_| stream_reply(cut.clone())).await;
    let (pieces, result) = collect(openai(&mock.url).as_ref()).await;
    assert_eq!(pieces, ["Hel"]);
    let error = result.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.class(), ErrorClass::Connect);

    // An HTTP error before the stream is classified as without streaming.
    let mock = MockServer::start(|_| {
        Reply::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "3")
    })
    .await;
    let error = collect(openai(&mock.url).as_ref()).await.1.unwrap_err();
    assert_eq!(error.class(), ErrorClass::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn anthropic_streams_are_read_piece_by_piece() {
    let delta = |text: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
    let body = sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"model": "claude-mock", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        ("content_block_delta", delta("Bonjour")),
        ("content_block_delta", delta(", monde")),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    let mock = MockServer::start(move |_| stream_reply(body.clone())).await;
    let (pieces, result) = collect(anthropic(&mock.url).as_ref()).await;
    let response = result.unwrap();
    assert_eq!(pieces, ["Bonjour", ", monde"]);
    assert_eq!(response.content, "Bonjour, monde");
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (12, 4)
    );
    assert_eq!(response.model, "claude-mock");
    let sent = &mock.requests()[0].body;
    assert_eq!(sent["stream"], true);

    // An overloaded error mid-stream: retryable, after the pieces so far.
    let body = sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"model": "claude-mock"}}),
        ),
        ("content_block_delta", delta("Bon")),
        (
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ]);
    let mock = MockServer::start(move |_| stream_reply(body.clone())).await;
    let (pieces, result) = collect(anthropic(&mock.url).as_ref()).await;
    assert_eq!(pieces, ["Bon"]);
    let error = result.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.class(), ErrorClass::Server);
    assert!(error.message().contains("Overloaded"), "{error}");
}
