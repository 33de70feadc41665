//! The REST API against a real Postgres: every route through the router
//! (tower `oneshot`), error statuses, tenant isolation, long-polls, group
//! commit, idempotency, backpressure, shutdown, and the whole path end to
//! end with the chat worker.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::{count, eventually, TestDb};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skipjack::api::group_commit::{GroupCommit, GroupCommitConfig};
use skipjack::api::long_poll::LongPollConfig;
use skipjack::api::{error::ApiError, Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::ids::{JobId, TenantId};
use skipjack::llm::simulated::SimulatedProvider;
use skipjack::queue::{self, Backoff, FinishItem, NewJob, Outcome, TokenUsage};
use skipjack::tenants;
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// An API over a fresh database, with one tenant ready.
struct TestApi {
    db: TestDb,
    api: Option<Api>,
    router: Router,
    shutdown: CancellationToken,
    key: String,
}

/// What a request came back with.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApi {
    async fn new() -> TestApi {
        Self::with_config(ApiConfig::default()).await
    }

    async fn with_config(config: ApiConfig) -> TestApi {
        let db = TestDb::new().await;
        let shutdown = CancellationToken::new();
        let api = Api::start(db.pool.clone(), config, shutdown.clone());
        let router = api.router();
        let key = new_tenant(&db.pool, "acme").await;
        TestApi {
            db,
            api: Some(api),
            router,
            shutdown,
            key,
        }
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("api running")
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    async fn call(&self, method: &str, uri: &str, key: Option<&str>, body: Option<&str>) -> Answer {
        call(&self.router, method, uri, key, body).await
    }

    async fn submit(&self, key: &str, body: Value) -> Answer {
        self.call("POST", "/v1/chat", Some(key), Some(&body.to_string()))
            .await
    }

    async fn get_job(&self, key: &str, id: &str) -> Answer {
        self.call("GET", &format!("/v1/chat/{id}"), Some(key), None)
            .await
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        // Stop the background tasks (listener, refresher) before the
        // database is dropped.
        self.shutdown.cancel();
        if let Some(api) = self.api.take() {
            tokio::spawn(api.stop());
        }
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// The longest long-poll wait the API grants, in seconds.
const LONGEST_WAIT_S: u64 = 60;
/// Generous bound for waits that must not hang; never a timing assertion.
/// Half the longest wait: a long-poll that answers within it was not
/// answered by its own deadline.
const NO_HANG: Duration = Duration::from_secs(LONGEST_WAIT_S / 2);

/// The answer of a long-poll of [`LONGEST_WAIT_S`], which must come before
/// its own deadline could have ended it.
async fn before_the_deadline<T>(poll: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(NO_HANG, poll)
        .await
        .expect("the long-poll answered only at its deadline, or never")
        .unwrap()
}

async fn new_tenant(pool: &PgPool, name: &str) -> String {
    tenants::create_tenant_with_key(pool, name, None)
        .await
        .unwrap()
        .secret()
        .to_owned()
}

fn job_id(answer: &Answer) -> String {
    answer.body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {}", answer.body))
        .to_owned()
}

/// Claims every ready chat job as `worker` and completes it with `reply`.
async fn complete_all(pool: &PgPool, reply: &str) -> Vec<JobId> {
    let claimed = queue::claim(
        pool,
        "test-worker",
        100,
        Duration::from_secs(30),
        &["chat".into()],
    )
    .await
    .unwrap();
    let outcome = Outcome::Completed {
        result: json!({"response": reply, "model": "test"}),
        usage: Some(TokenUsage {
            input_tokens: 7,
            output_tokens: 3,
        }),
    };
    let items: Vec<FinishItem> = claimed
        .iter()
        .map(|job| FinishItem {
            job: job.id,
            attempt: job.attempt,
            outcome: &outcome,
        })
        .collect();
    queue::finish(pool, "test-worker", &items, &Backoff::default())
        .await
        .unwrap();
    claimed.iter().map(|j| j.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_poll_queue_and_complete() {
    let t = TestApi::new().await;
    let submitted = t
        .submit(
            &t.key,
            json!({"user_id": "u1", "message": "hello", "priority": 3, "metadata": {"k": 1}}),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{}", submitted.body);
    let id = job_id(&submitted);
    assert_eq!(
        submitted.headers[header::LOCATION].to_str().unwrap(),
        format!("/v1/chat/{id}")
    );
    assert_eq!(submitted.body["status"], "queued");
    assert_eq!(submitted.body["priority"], 3);
    assert!(submitted.body["conversation_id"].is_string());

    let polled = t.get_job(&t.key, &id).await;
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(polled.body["status"], "queued");
    assert_eq!(polled.body["attempts"], 0);
    // The submission's created_at is the job's, to the microsecond.
    assert_eq!(polled.body["created_at"], submitted.body["created_at"]);
    assert!(polled.body.get("response").is_none());

    // The queue view comes from a snapshot refreshed every second.
    eventually(NO_HANG, "the job in the queue view", || async {
        t.call("GET", "/v1/queue", Some(&t.key), None).await.body["total"] == 1
    })
    .await;
    let queue = t.call("GET", "/v1/queue", Some(&t.key), None).await;
    assert_eq!(queue.status, StatusCode::OK);
    assert_eq!(queue.body["total"], 1);
    assert_eq!(queue.body["depth"]["3"], 1);
    assert_eq!(queue.body["processing"], 0);

    complete_all(t.pool(), "hi there").await;
    let done = t.get_job(&t.key, &id).await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["response"], "hi there");
    assert_eq!(done.body["attempts"], 1);
    assert_eq!(
        done.body["usage"],
        json!({"input_tokens": 7, "output_tokens": 3})
    );
    assert!(done.body["started_at"].is_string());
    assert!(done.body["finished_at"].is_string());

    // The default conversation exists and can be read (the test completed
    // the job without the chat handler, so it has no messages).
    let conversation = submitted.body["conversation_id"].as_str().unwrap();
    let messages = t
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(messages.status, StatusCode::OK);
    assert_eq!(messages.body["messages"], json!([]));
    assert_eq!(messages.body["user_id"], "u1");

    // The enqueue counter moved.
    let metrics = t.call("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("skipjack_jobs_enqueued_total{priority=\"3\"}"));
    assert!(text.contains(
        "skipjack_http_requests_total{method=\"POST\",route=\"/v1/chat\",status=\"202\"}"
    ));
    assert!(text.contains("route=\"/v1/chat/{job_id}\""));
    // The submission's stages were timed: the conversation found, the
    // group commit waited for and flushed.
    for stage in ["resolve", "enqueue_wait", "enqueue_flush"] {
        let series = format!("skipjack_submit_stage_seconds_count{{stage=\"{stage}\"}} ");
        let count: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in /metrics"))
            .parse()
            .unwrap();
        assert!(count >= 1.0, "{series}{count}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_openapi() {
    let t = TestApi::new().await;
    let health = t.call("GET", "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = t.call("GET", "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    let doc = t.call("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/chat", "post"),
        ("/v1/chat/{job_id}", "get"),
        ("/v1/chat/{job_id}", "delete"),
        ("/v1/conversations", "post"),
        ("/v1/conversations/{id}/messages", "get"),
        ("/v1/queue", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let submit = &paths["/v1/chat"]["post"]["responses"];
    for status in ["202", "400", "401", "409", "413", "422", "429", "503"] {
        assert!(submit.get(status).is_some(), "POST /v1/chat lacks {status}");
    }
    // A reused idempotency key, and the long-poll caps, are stated.
    let conflict = submit["409"]["description"].as_str().unwrap();
    assert!(conflict.contains("idempotency_key_reused"), "{conflict}");
    let poll = &paths["/v1/chat/{job_id}"]["get"]["responses"]["429"];
    let capped = poll["description"].as_str().unwrap_or_default();
    assert!(
        capped.contains("too_many_long_polls") && capped.contains("SKIPJACK_MAX_LONG_POLLS"),
        "{poll}"
    );
    assert!(poll["headers"]["Retry-After"].is_object(), "{poll}");
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for schema in [
        "ChatRequest",
        "SubmitResponse",
        "JobResponse",
        "ErrorBody",
        "QueueResponse",
        "QueueScope",
    ] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    // The queue route says who sees what.
    let queue = paths["/v1/queue"]["get"]["responses"]["200"]["description"]
        .as_str()
        .unwrap();
    assert!(queue.contains("SKIPJACK_ADMIN_KEY"), "{queue}");
    assert!(paths["/metrics"]["get"]["responses"].get("404").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_json_errors() {
    let t = TestApi::with_config(ApiConfig {
        max_body_bytes: 4096,
        max_message_bytes: 100,
        ..ApiConfig::default()
    })
    .await;
    let key = t.key.clone();
    let post = |body: String| {
        let t = &t;
        let key = key.clone();
        async move { t.call("POST", "/v1/chat", Some(&key), Some(&body)).await }
    };

    // 400: not JSON.
    let a = post("{not json".into()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "malformed_json");
    // 413: body over the limit.
    let big = json!({"user_id": "u", "message": "x".repeat(5000)}).to_string();
    let a = post(big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "payload_too_large");
    // 422: wrong types, missing fields, out of range.
    for (body, code) in [
        (json!({"user_id": "u", "message": 5}), "invalid_body"),
        (json!({"user_id": "u"}), "invalid_body"),
        (
            json!({"user_id": "u", "message": "hi", "priority": "high"}),
            "invalid_body",
        ),
        (
            json!({"user_id": "u", "message": "hi", "priority": 1.5}),
            "invalid_body",
        ),
        (
            json!({"user_id": "u", "message": "hi", "conversation_id": "nope"}),
            "invalid_body",
        ),
        (
            json!({"user_id": "u", "message": "hi", "priority": 0}),
            "invalid_priority",
        ),
        (
            json!({"user_id": "u", "message": "hi", "priority": 11}),
            "invalid_priority",
        ),
        (json!({"user_id": "u", "message": ""}), "invalid_message"),
        (json!({"user_id": "u", "message": "   "}), "invalid_message"),
        (
            json!({"user_id": "u", "message": "x".repeat(101)}),
            "invalid_message",
        ),
        (
            json!({"user_id": "u", "message": "nul\u{0}"}),
            "invalid_message",
        ),
        (json!({"user_id": "", "message": "hi"}), "invalid_user_id"),
        (
            json!({"user_id": "u".repeat(257), "message": "hi"}),
            "invalid_user_id",
        ),
        (
            json!({"user_id": "u", "message": "hi", "idempotency_key": ""}),
            "invalid_idempotency_key",
        ),
        (
            json!({"user_id": "u", "message": "hi", "metadata": {"a": "\u{0}"}}),
            "invalid_metadata",
        ),
        (json!([1, 2]), "invalid_body"),
    ] {
        let a = post(body.to_string()).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {}",
            a.body
        );
        assert_eq!(a.code(), code, "{body}");
        assert!(a.body["error"]["message"].is_string());
    }
    // 422: ids and waits.
    for uri in [
        "/v1/chat/not-a-uuid",
        "/v1/conversations/123/messages",
        "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f?wait=61",
        "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f?wait=-1",
        "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f?wait=soon",
    ] {
        let a = t.call("GET", uri, Some(&key), None).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {}",
            a.body
        );
    }
    let a = t.call("DELETE", "/v1/chat/xyz", Some(&key), None).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

    // 404: no such job, conversation or route.
    let missing = uuid::Uuid::now_v7();
    let a = t.get_job(&key, &missing.to_string()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");
    let a = t
        .call(
            "GET",
            &format!("/v1/conversations/{missing}/messages"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = t
        .call("DELETE", &format!("/v1/chat/{missing}"), Some(&key), None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = post(json!({"user_id": "u", "message": "hi", "conversation_id": missing}).to_string())
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = t.call("GET", "/v2/nothing", None, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");
    // 405, in the same shape.
    let a = t.call("PUT", "/v1/queue", Some(&key), None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "method_not_allowed");

    // None of it was stored.
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 0);
}

// On one thread: the cache's lifetime is let pass with a paused clock.
#[tokio::test]
async fn keys_are_required_and_revocation_takes_effect() {
    let ttl = Duration::from_secs(3600);
    let t = TestApi::with_config(ApiConfig {
        auth_cache_ttl: ttl,
        ..ApiConfig::default()
    })
    .await;
    let body = json!({"user_id": "u", "message": "hi"}).to_string();
    for key in [
        None,
        Some("sk_wrongwrongwrongwrongwrongwrongwrongwrongwro"),
        Some("garbage"),
        Some(""),
    ] {
        for (method, uri) in [
            ("POST", "/v1/chat"),
            ("GET", "/v1/queue"),
            ("GET", "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f"),
            ("DELETE", "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f"),
            ("POST", "/v1/conversations"),
            (
                "GET",
                "/v1/conversations/01a21beb-c532-7397-95fa-704937279d7f/messages",
            ),
        ] {
            let a = t.call(method, uri, key, Some(&body)).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri} {key:?}");
            assert_eq!(a.code(), "unauthorized");
            assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    // A second key of the same tenant works; revoking it locks it out once
    // the cache lifetime is over, while the first key keeps working.
    let tenant = tenants::find_tenant(t.pool(), "acme").await.unwrap();
    let second = tenants::create_key(t.pool(), tenant.id).await.unwrap();
    let a = t
        .call("GET", "/v1/queue", Some(second.secret()), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    tenants::revoke_key(t.pool(), &second.prefix).await.unwrap();
    // Still cached: the cache lifetime bounds how late a revocation bites.
    let a = t
        .call("GET", "/v1/queue", Some(second.secret()), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::pause();
    tokio::time::advance(ttl).await;
    tokio::time::resume();
    let a = t
        .call("GET", "/v1/queue", Some(second.secret()), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = t.call("GET", "/v1/queue", Some(&t.key), None).await;
    assert_eq!(a.status, StatusCode::OK);
    // Revoking again: nothing left to revoke.
    assert!(tenants::revoke_key(t.pool(), &second.prefix).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_jobs_and_conversations() {
    let t = TestApi::new().await;
    let other = new_tenant(t.pool(), "globex").await;
    let a = t
        .submit(&t.key, json!({"user_id": "u1", "message": "mine"}))
        .await;
    let id = job_id(&a);
    let conversation = a.body["conversation_id"].as_str().unwrap().to_owned();
    let missing = uuid::Uuid::now_v7().to_string();

    // B's view of A's job is exactly B's view of a job that does not exist.
    let theirs = t.get_job(&other, &id).await;
    let none = t.get_job(&other, &missing).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.body, none.body);
    let theirs = t
        .call("GET", &format!("/v1/chat/{id}?wait=1"), Some(&other), None)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let theirs = t
        .call("DELETE", &format!("/v1/chat/{id}"), Some(&other), None)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let theirs = t
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&other),
            None,
        )
        .await;
    let none = t
        .call(
            "GET",
            &format!("/v1/conversations/{missing}/messages"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.body, none.body);
    // B cannot post into A's conversation, even with the same user id.
    let theirs = t
        .submit(
            &other,
            json!({"user_id": "u1", "message": "hi", "conversation_id": conversation}),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    // B's user u1 is another person: another default conversation.
    let b = t
        .submit(&other, json!({"user_id": "u1", "message": "theirs"}))
        .await;
    assert_eq!(b.status, StatusCode::ACCEPTED);
    assert_ne!(b.body["conversation_id"], a.body["conversation_id"]);
    // A's job is untouched, and A still sees it.
    let mine = t.get_job(&t.key, &id).await;
    assert_eq!(mine.body["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_per_user_and_cancel_takes_live_jobs_only() {
    let t = TestApi::new().await;
    let created = t
        .call(
            "POST",
            "/v1/conversations",
            Some(&t.key),
            Some(r#"{"user_id": "alice"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let conversation = created.body["conversation_id"].as_str().unwrap().to_owned();
    assert!(created.headers.contains_key(header::LOCATION));

    let a = t
        .submit(
            &t.key,
            json!({"user_id": "alice", "message": "one", "conversation_id": conversation}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.body["conversation_id"], conversation.as_str());
    // Another user of the same tenant cannot use it.
    let b = t
        .submit(
            &t.key,
            json!({"user_id": "bob", "message": "two", "conversation_id": conversation}),
        )
        .await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    let wrong_user = t
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/messages?user_id=bob"),
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(wrong_user.status, StatusCode::NOT_FOUND);
    let right_user = t
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/messages?user_id=alice"),
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(right_user.status, StatusCode::OK);

    // Cancel: a queued job once, then 409.
    let id = job_id(&a);
    let cancelled = t
        .call("DELETE", &format!("/v1/chat/{id}"), Some(&t.key), None)
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    let again = t
        .call("DELETE", &format!("/v1/chat/{id}"), Some(&t.key), None)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "not_cancellable");
    // A job being processed is cancelled too.
    let c = t
        .submit(&t.key, json!({"user_id": "carol", "message": "three"}))
        .await;
    let claimed = queue::claim(t.pool(), "w", 10, Duration::from_secs(30), &["chat".into()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let busy = t
        .call(
            "DELETE",
            &format!("/v1/chat/{}", job_id(&c)),
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(busy.status, StatusCode::OK, "{}", busy.body);
    assert_eq!(busy.body["status"], "cancelled");
    assert_eq!(
        t.get_job(&t.key, &job_id(&c)).await.body["status"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_at_the_completion_not_at_its_deadline() {
    // The re-check is out of reach: only the completion's NOTIFY can
    // answer the wait before its deadline.
    let t = TestApi::with_config(ApiConfig {
        long_poll: LongPollConfig {
            recheck: Duration::from_secs(3600),
            ..LongPollConfig::default()
        },
        ..ApiConfig::default()
    })
    .await;
    let id = job_id(
        &t.submit(&t.key, json!({"user_id": "u", "message": "hi"}))
            .await,
    );
    let router = t.router.clone();
    let key = t.key.clone();
    let uri = format!("/v1/chat/{id}?wait={LONGEST_WAIT_S}");
    let poll = tokio::spawn(async move { call(&router, "GET", &uri, Some(&key), None).await });
    // The wait is in flight, the listener listens and the process is
    // registered as a waiter.
    eventually(NO_HANG, "long-poll waiting", || async {
        t.api().state().long_poll.in_flight() == 1
            && t.api().state().long_poll.is_listening()
            && count(
                t.pool(),
                "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_done'",
            )
            .await
                == 1
    })
    .await;
    let completed = complete_all(t.pool(), "done").await;
    assert_eq!(completed.len(), 1);
    let answer = before_the_deadline(poll).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "completed");
    assert_eq!(answer.body["response"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_the_unfinished_job_when_the_wait_is_over() {
    let t = TestApi::new().await;
    let id = job_id(
        &t.submit(&t.key, json!({"user_id": "u", "message": "hi"}))
            .await,
    );
    let started = Instant::now();
    let a = tokio::time::timeout(
        NO_HANG,
        t.call(
            "GET",
            &format!("/v1/chat/{id}?wait=0.3"),
            Some(&t.key),
            None,
        ),
    )
    .await
    .expect("the wait ended");
    let waited = started.elapsed();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "queued");
    // Sleeps never end early: the whole wait was served.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // A finished job answers at once, whatever the wait.
    complete_all(t.pool(), "ok").await;
    let router = t.router.clone();
    let (key, uri) = (
        t.key.clone(),
        format!("/v1/chat/{id}?wait={LONGEST_WAIT_S}"),
    );
    let a = before_the_deadline(tokio::spawn(async move {
        call(&router, "GET", &uri, Some(&key), None).await
    }))
    .await;
    assert_eq!(a.body["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_survives_a_lost_listener_and_ends_at_shutdown() {
    let t = TestApi::new().await;
    let first = job_id(
        &t.submit(&t.key, json!({"user_id": "u1", "message": "a"}))
            .await,
    );
    let second = job_id(
        &t.submit(&t.key, json!({"user_id": "u2", "message": "b"}))
            .await,
    );
    let spawn_poll = |id: String| {
        let router = t.router.clone();
        let key = t.key.clone();
        tokio::spawn(async move {
            call(
                &router,
                "GET",
                &format!("/v1/chat/{id}?wait={LONGEST_WAIT_S}"),
                Some(&key),
                None,
            )
            .await
        })
    };
    let poll = spawn_poll(first.clone());
    eventually(NO_HANG, "long-poll waiting", || async {
        t.api().state().long_poll.in_flight() == 1
    })
    .await;
    // Kill the LISTEN connection and complete the job while it is down:
    // the reconnect makes the waiter look again.
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'skipjack-test-listener'",
    )
    .fetch_one(t.pool())
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(t.pool())
        .await
        .unwrap();
    complete_all(t.pool(), "after reconnect").await;
    let a = before_the_deadline(poll).await;
    assert_eq!(a.body["status"], "completed");

    // Shutdown: a waiting long-poll answers at once with the current state.
    let _ = second;
    let third = job_id(
        &t.submit(&t.key, json!({"user_id": "u3", "message": "c"}))
            .await,
    );
    let poll = spawn_poll(third);
    eventually(NO_HANG, "long-poll waiting", || async {
        t.api().state().long_poll.in_flight() == 1
    })
    .await;
    t.shutdown.cancel();
    let a = before_the_deadline(poll).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_yields_one_job_sequentially_and_concurrently() {
    let t = TestApi::new().await;
    let body = json!({"user_id": "u", "message": "once", "idempotency_key": "k-1"});
    let first = t.submit(&t.key, body.clone()).await;
    let again = t.submit(&t.key, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(first.body, again.body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The same key of another tenant is another job.
    let other = new_tenant(t.pool(), "globex").await;
    let theirs = t.submit(&other, body).await;
    assert_ne!(theirs.body["job_id"], first.body["job_id"]);

    // Concurrently: 20 submissions of one new key.
    let body = json!({"user_id": "u", "message": "race", "idempotency_key": "k-2"}).to_string();
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let router = t.router.clone();
        let key = t.key.clone();
        let body = body.clone();
        async move { call(&router, "POST", "/v1/chat", Some(&key), Some(&body)).await }
    }))
    .await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        assert_eq!(a.body, answers[0].body);
    }
    assert_eq!(
        count(
            t.pool(),
            "SELECT count(*) FROM jobs WHERE idempotency_key = 'k-2'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_refuses_at_once_and_stores_nothing() {
    let t = TestApi::with_config(ApiConfig {
        max_tenant_queue_depth: 3,
        max_queue_depth: 5,
        retry_after_secs: 2,
        // Reads only where the test asks for them, so the counts are exact.
        depth_refresh: Duration::from_secs(3600),
        ..ApiConfig::default()
    })
    .await;
    let admission = t.api().state().admission.clone();
    eventually(NO_HANG, "start-up read done", || async {
        admission.refreshes() >= 1
    })
    .await;
    // A user per submission: one conversation each, so every job is
    // claimable when the test drains the queue.
    let users = std::sync::atomic::AtomicUsize::new(0);
    let submit = |key: String, priority: i64| {
        let t = &t;
        let user = format!(
            "u{}",
            users.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            t.submit(
                &key,
                json!({"user_id": user, "message": "m", "priority": priority}),
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(submit(t.key.clone(), 1).await.status, StatusCode::ACCEPTED);
    }
    let refused = submit(t.key.clone(), 1).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code(), "queue_full");
    assert_eq!(refused.headers[header::RETRY_AFTER], "2");
    // Priority 5+ may fill 20% more: ceil(3 * 0.2) = 1 more.
    assert_eq!(submit(t.key.clone(), 5).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        submit(t.key.clone(), 9).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 4);

    // The global limit (5) binds another tenant too, after one more job.
    let other = new_tenant(t.pool(), "globex").await;
    assert_eq!(submit(other.clone(), 1).await.status, StatusCode::ACCEPTED);
    let refused = submit(other.clone(), 1).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 5);

    // The refresher sees jobs leave: room again.
    complete_all(t.pool(), "ok").await;
    admission.refresh(t.pool()).await.unwrap();
    assert_eq!(admission.global_estimate(), 0);
    assert_eq!(submit(other.clone(), 1).await.status, StatusCode::ACCEPTED);
    let metrics = t.call("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("skipjack_backpressure_rejections_total{scope=\"tenant\"}"));
    assert!(text.contains("skipjack_backpressure_rejections_total{scope=\"global\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_tells_each_waiting_user_when_its_turn_comes() {
    let t = TestApi::with_config(ApiConfig {
        max_queue_depth: 1,
        retry_after_secs: 1,
        depth_refresh: Duration::from_secs(3600),
        ..ApiConfig::default()
    })
    .await;
    let admission = t.api().state().admission.clone();
    eventually(NO_HANG, "start-up read done", || async {
        admission.refreshes() >= 1
    })
    .await;
    let submit = |user: &str| {
        let t = &t;
        let body = json!({"user_id": user, "message": "m"});
        async move { t.submit(&t.key, body).await }
    };
    assert_eq!(submit("first").await.status, StatusCode::ACCEPTED);
    // Nothing admitted over the last whole seconds counts as one a second:
    // each waiting user is told one second more than the one ahead of it.
    let mut told = Vec::new();
    for user in ["u0", "u1", "u2", "u3"] {
        let refused = submit(user).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code(), "queue_full");
        told.push(
            refused.headers[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(told, ["1", "2", "3", "4"]);
    // Asking again early keeps a user's place (second in line, not last).
    let again = submit("u1").await;
    assert_eq!(again.headers[header::RETRY_AFTER], "2");
    assert_eq!(admission.waiters(), 4);
    // The waiting users stored nothing.
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_share_insert_statements() {
    let t = TestApi::with_config(ApiConfig {
        group_commit_window: Duration::from_millis(50),
        ..ApiConfig::default()
    })
    .await;
    // Warm the conversation cache so the submissions reach the batcher together.
    let users = 10;
    for u in 0..users {
        t.submit(
            &t.key,
            json!({"user_id": format!("user-{u}"), "message": "warm"}),
        )
        .await;
    }
    let before = t.api().state().group_commit.statements();
    let n = 60;
    let answers = futures_util::future::join_all((0..n).map(|i| {
        let router = t.router.clone();
        let key = t.key.clone();
        let body = json!({"user_id": format!("user-{}", i % users), "message": format!("m-{i}")})
            .to_string();
        async move {
            (
                i,
                call(&router, "POST", "/v1/chat", Some(&key), Some(&body)).await,
            )
        }
    }))
    .await;
    let statements = t.api().state().group_commit.statements() - before;
    assert!(
        statements < n as u64 / 2,
        "{statements} statements for {n} submissions"
    );
    let mut ids = std::collections::HashSet::new();
    for (i, a) in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED);
        let id: JobId = job_id(a).parse().unwrap();
        assert!(ids.insert(id), "duplicate id");
        // Each id names the job that request submitted.
        let job = queue::get(t.pool(), id, None).await.unwrap().unwrap();
        assert_eq!(job.payload["message"], format!("m-{i}"));
        assert_eq!(job.payload["user_id"], format!("user-{}", i % users));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_messages_share_one_default_conversation() {
    let t = TestApi::new().await;
    let body = json!({"user_id": "newcomer", "message": "hi"}).to_string();
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let router = t.router.clone();
        let key = t.key.clone();
        let body = body.clone();
        async move { call(&router, "POST", "/v1/chat", Some(&key), Some(&body)).await }
    }))
    .await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        assert_eq!(
            a.body["conversation_id"],
            answers[0].body["conversation_id"]
        );
    }
    assert_eq!(
        count(
            t.pool(),
            "SELECT count(*) FROM conversations WHERE user_id = 'newcomer'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_a_quick_503() {
    // A pool pointing at a port nobody listens on.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let shutdown = CancellationToken::new();
    let api = Api::start(pool, ApiConfig::default(), shutdown.clone());
    let router = api.router();
    let key = "sk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (method, uri, body) in [
        (
            "POST",
            "/v1/chat",
            Some(r#"{"user_id": "u", "message": "hi"}"#),
        ),
        ("GET", "/v1/queue", None),
        (
            "GET",
            "/v1/chat/01a21beb-c532-7397-95fa-704937279d7f?wait=60",
            None,
        ),
    ] {
        // Answered long before the long-poll's wait would be over.
        let a = tokio::time::timeout(NO_HANG, call(&router, method, uri, Some(key), body))
            .await
            .unwrap_or_else(|_| panic!("{method} {uri}: no answer while the database is down"));
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {}",
            a.body
        );
        assert_eq!(a.code(), "unavailable");
        assert!(a.headers.contains_key(header::RETRY_AFTER));
    }
    let ready = call(&router, "GET", "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    shutdown.cancel();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_long_polls_at_shutdown() {
    let t = TestApi::new().await;
    let id = job_id(
        &t.submit(&t.key, json!({"user_id": "u", "message": "hi"}))
            .await,
    );
    let shutdown = CancellationToken::new();
    let api = Api::start(
        t.pool().clone(),
        ApiConfig {
            // Far away: the server ends because the long-poll answered,
            // not because the grace period ran out.
            shutdown_grace: Duration::from_secs(3600),
            ..ApiConfig::default()
        },
        shutdown.clone(),
    );
    let long_poll = api.state().long_poll.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(api.serve(listener));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/{id}?wait={LONGEST_WAIT_S}");
    let key = t.key.clone();
    let poll = tokio::spawn(async move {
        client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    eventually(NO_HANG, "long-poll waiting", || async {
        long_poll.in_flight() == 1
    })
    .await;
    shutdown.cancel();
    let answer = before_the_deadline(poll).await;
    assert_eq!(answer["status"], "queued");
    tokio::time::timeout(NO_HANG, server)
        .await
        .expect("the server ended with its long-poll answered")
        .unwrap()
        .unwrap();
    // The process unregistered as a waiter.
    assert_eq!(
        count(
            t.pool(),
            "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_done'"
        )
        .await,
        0
    );
    // And accepts nothing more.
    assert!(reqwest::get(format!("http://{addr}/health")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tenants_create_prints_only_the_key() {
    let db = TestDb::new().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["tenants", "create", "initech"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.trim_end_matches('\n');
    assert!(!key.contains('\n') && key.starts_with("sk_"), "{stdout:?}");
    // The key authenticates, and never reached stderr.
    let found = tenants::authenticate(&db.pool, key).await.unwrap();
    assert!(found.is_some());
    assert!(!String::from_utf8_lossy(&output.stderr).contains(key));

    // keys create / revoke.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["keys", "create", "initech"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let second = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(tenants::authenticate(&db.pool, &second)
        .await
        .unwrap()
        .is_some());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skipjack"))
        .args(["keys", "revoke", &second[..11]])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(tenants::authenticate(&db.pool, &second)
        .await
        .unwrap()
        .is_none());
    assert!(tenants::authenticate(&db.pool, key)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_three_turns_with_the_chat_worker() {
    let t = TestApi::new().await;
    let provider = Arc::new(SimulatedProvider::new(Duration::ZERO, Duration::ZERO, 0.0));
    let worker = Arc::new(
        Worker::builder(t.pool().clone())
            .register(ChatHandler::new(t.pool().clone(), provider))
            .config(WorkerConfig {
                maintenance: None,
                poll_interval: Duration::from_millis(200),
                ..WorkerConfig::default()
            })
            .build()
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let run = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await.unwrap() })
    };
    let mut conversation = None;
    for (turn, message) in ["first", "second", "third"].iter().enumerate() {
        let a = t
            .submit(&t.key, json!({"user_id": "e2e", "message": message}))
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        let c = a.body["conversation_id"].clone();
        assert_eq!(*conversation.get_or_insert(c.clone()), c);
        let done = t
            .call(
                "GET",
                &format!("/v1/chat/{}?wait=30", job_id(&a)),
                Some(&t.key),
                None,
            )
            .await;
        assert_eq!(done.body["status"], "completed", "{}", done.body);
        assert_eq!(
            done.body["response"],
            format!("echo({}): {message}", 2 * turn + 1)
        );
    }
    let conversation = conversation.unwrap();
    let messages = t
        .call(
            "GET",
            &format!(
                "/v1/conversations/{}/messages",
                conversation.as_str().unwrap()
            ),
            Some(&t.key),
            None,
        )
        .await;
    let roles: Vec<&str> = messages.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert_eq!(messages.body["messages"][5]["content"], "echo(5): third");
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let t = TestApi::new().await;
    let body = json!({
        "user_id": "u", "message": "once", "priority": 3,
        "metadata": {"a": 1, "b": {"c": [1, 2], "d": "x"}},
        "idempotency_key": "k-body",
    });
    let first = t.submit(&t.key, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    // The same request, its metadata keys in another order: the same job.
    let reordered = r#"{"idempotency_key": "k-body", "priority": 3, "message": "once",
        "metadata": {"b": {"d": "x", "c": [1, 2]}, "a": 1}, "user_id": "u"}"#;
    let again = t
        .call("POST", "/v1/chat", Some(&t.key), Some(reordered))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["job_id"], first.body["job_id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // The same key with any canonical field changed: 409, and no job.
    let conversation = t
        .call(
            "POST",
            "/v1/conversations",
            Some(&t.key),
            Some(&json!({"user_id": "u"}).to_string()),
        )
        .await;
    let other_conversation = conversation.body["conversation_id"].clone();
    for (field, value) in [
        ("message", json!("twice")),
        ("user_id", json!("v")),
        ("priority", json!(4)),
        ("metadata", json!({"a": 2, "b": {"c": [1, 2], "d": "x"}})),
        ("conversation_id", other_conversation),
    ] {
        let mut changed = body.clone();
        changed[field] = value;
        let refused = t.submit(&t.key, changed).await;
        assert_eq!(
            refused.status,
            StatusCode::CONFLICT,
            "{field}: {}",
            refused.body
        );
        assert_eq!(refused.code(), "idempotency_key_reused", "{field}");
    }
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 1);

    // Once the job is finished, a replay still gets it; a different body
    // still does not.
    complete_all(t.pool(), "done").await;
    let replay = t.submit(&t.key, body.clone()).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED);
    assert_eq!(replay.body["job_id"], first.body["job_id"]);
    assert_eq!(replay.body["status"], "completed");
    let mut changed = body;
    changed["message"] = json!("later");
    let refused = t.submit(&t.key, changed).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.code(), "idempotency_key_reused");
    assert_eq!(
        count(
            t.pool(),
            "SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM job_history)"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_live_as_long_as_their_jobs() {
    use skipjack::queue::maintenance::{housekeeping, MaintenanceConfig};
    let t = TestApi::new().await;
    let submit = |key: &'static str| {
        t.submit(
            &t.key,
            json!({"user_id": key, "message": key, "idempotency_key": key}),
        )
    };
    // "slow": submitted 40 days ago, finished now (it waited, retried...).
    // "old": submitted and finished 40 days ago.
    let slow = job_id(&submit("slow").await);
    let old = job_id(&submit("old").await);
    assert_eq!(complete_all(t.pool(), "done").await.len(), 2);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '40 days'")
        .execute(t.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE job_history SET created_at = now() - interval '40 days',
                finished_at = now() - interval '40 days'
         WHERE id = $1::uuid",
    )
    .bind(&old)
    .execute(t.pool())
    .await
    .unwrap();
    let config = MaintenanceConfig {
        retention: Duration::from_secs(30 * 24 * 3600),
        ..MaintenanceConfig::default()
    };
    let report = housekeeping(t.pool(), &config, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(report.idempotency_keys_pruned, 1);
    // The slow job is still kept, so its key is: a retry finds it.
    let again = submit("slow").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(job_id(&again), slow);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The old job is gone, and its key with it (never a key without a job).
    let fresh = submit("old").await;
    assert_eq!(fresh.status, StatusCode::ACCEPTED, "{}", fresh.body);
    assert_ne!(job_id(&fresh), old);
    assert!(!fresh.headers.contains_key("idempotent-replayed"));
}

// ---------------------------------------------------------------------------
// GET /v1/queue: each tenant its own queue, the whole queue for the admin key.

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789abcdef0123456789";

fn queue_config(refresh: Duration) -> ApiConfig {
    ApiConfig {
        queue_refresh: refresh,
        admin_key_hash: Some(skipjack::api::queue_status::admin_key_hash(ADMIN_KEY)),
        ..ApiConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_view_is_the_tenants_own_and_the_whole_queue_needs_the_admin_key() {
    let t = TestApi::with_config(queue_config(Duration::from_millis(50))).await;
    let acme = t.key.clone();
    let globex = new_tenant(t.pool(), "globex").await;
    for (key, priority, n) in [(&acme, 3, 3), (&globex, 7, 2), (&globex, 3, 1)] {
        for i in 0..n {
            let a = t
                .submit(
                    key,
                    json!({"user_id": format!("u{priority}-{i}"), "message": "hi", "priority": priority}),
                )
                .await;
            assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        }
    }
    // Jobs of no tenant count in the whole queue only.
    let mut conn = t.pool().acquire().await.unwrap();
    queue::enqueue(&mut conn, &queue::NewJob::new("other", json!({})))
        .await
        .unwrap();
    drop(conn);
    eventually(NO_HANG, "the snapshot sees every job", || async {
        t.call("GET", "/v1/queue", Some(ADMIN_KEY), None).await.body["total"] == 7
    })
    .await;

    let a = t.call("GET", "/v1/queue", Some(&acme), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["scope"], "tenant");
    assert_eq!(a.body["total"], 3);
    assert_eq!(a.body["depth"], json!({"3": 3}));
    assert_eq!(a.body["processing"], 0);
    assert!(a.body["as_of"].is_string());
    let g = t.call("GET", "/v1/queue", Some(&globex), None).await;
    assert_eq!(g.body["scope"], "tenant");
    assert_eq!(g.body["total"], 3);
    assert_eq!(g.body["depth"], json!({"3": 1, "7": 2}));
    let all = t.call("GET", "/v1/queue", Some(ADMIN_KEY), None).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["scope"], "all");
    assert_eq!(all.body["total"], 7);
    assert_eq!(all.body["depth"], json!({"1": 1, "3": 4, "7": 2}));

    // A claimed job is processing for its tenant and in the whole queue,
    // and nowhere else.
    let claimed = queue::claim(
        t.pool(),
        "w",
        1,
        Duration::from_secs(60),
        &["chat".to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].priority.get(), 7);
    eventually(NO_HANG, "the claim in the snapshot", || async {
        t.call("GET", "/v1/queue", Some(ADMIN_KEY), None).await.body["processing"] == 1
    })
    .await;
    let g = t.call("GET", "/v1/queue", Some(&globex), None).await;
    assert_eq!(g.body["processing"], 1);
    assert_eq!(g.body["depth"], json!({"3": 1, "7": 1}));
    let a = t.call("GET", "/v1/queue", Some(&acme), None).await;
    assert_eq!(a.body["processing"], 0);
    assert_eq!(a.body["total"], 3);

    // A tenant's key gets its own view whatever it asks for; the admin key
    // with a byte more or less is no key at all.
    for uri in ["/v1/queue?scope=all", "/v1/queue?tenant=all", "/v1/queue"] {
        let a = t.call("GET", uri, Some(&acme), None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["scope"], "tenant", "{uri}");
        assert_eq!(a.body["total"], 3, "{uri}");
    }
    for wrong in [
        format!("{ADMIN_KEY}x"),
        ADMIN_KEY[..ADMIN_KEY.len() - 1].to_owned(),
    ] {
        let a = t.call("GET", "/v1/queue", Some(&wrong), None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // The admin key is for the queue view only: it is no tenant.
    let a = t
        .submit(ADMIN_KEY, json!({"user_id": "u", "message": "hi"}))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_there_is_no_whole_queue_view() {
    let t = TestApi::new().await;
    let a = t.call("GET", "/v1/queue", Some(ADMIN_KEY), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = t.call("GET", "/v1/queue", Some(&t.key), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["scope"], "tenant");
}

/// Requests read the snapshot, they count nothing: with a refresh far
/// away, a new job stays out of the answer, and every answer carries the
/// same `as_of`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_view_reads_the_snapshot_not_the_table() {
    let t = TestApi::with_config(queue_config(Duration::from_secs(3600))).await;
    let first = t.call("GET", "/v1/queue", Some(&t.key), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["total"], 0);
    let a = t
        .submit(&t.key, json!({"user_id": "u", "message": "hi"}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(count(t.pool(), "SELECT count(*) FROM jobs").await, 1);
    for key in [t.key.as_str(), ADMIN_KEY] {
        let again = t.call("GET", "/v1/queue", Some(key), None).await;
        assert_eq!(again.body["total"], 0);
        assert_eq!(again.body["as_of"], first.body["as_of"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_leave_the_public_port_when_they_have_their_own_address() {
    let public = TestApi::new().await;
    let a = public.call("GET", "/metrics", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a
        .body
        .as_str()
        .unwrap()
        .contains("skipjack_http_requests_total"));

    let private = TestApi::with_config(ApiConfig {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ApiConfig::default()
    })
    .await;
    let a = private.call("GET", "/metrics", None, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");
    // The probes stay on the public port.
    assert_eq!(
        private.call("GET", "/health", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        private.call("GET", "/ready", None, None).await.status,
        StatusCode::OK
    );
    // And the metrics router serves them on the other address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(skipjack::api::serve_metrics(listener, stop.clone()));
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("skipjack_http_requests_total"));
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A group commit whose batches are `jobs` submissions each (its window
/// never runs out first), one at a time; it stops when the token is
/// cancelled.
fn batches_of(
    pool: &PgPool,
    jobs: usize,
) -> (GroupCommit, tokio::task::JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let (commit, gatherer) = GroupCommit::spawn(
        pool.clone(),
        GroupCommitConfig {
            window: Duration::from_secs(3600),
            max_batch: jobs,
            flushes: 1,
        },
        stop.clone(),
    );
    (commit, gatherer, stop)
}

/// Two submissions of one idempotency key in the same batch: the statement
/// cannot see the key the first one takes, so the second is enqueued again
/// alone and finds the first one's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_twice_in_one_batch_yields_one_job() {
    let db = TestDb::new().await;
    let tenant = tenants::create_tenant(&db.pool, "acme", None)
        .await
        .unwrap();
    let (commit, gatherer, stop) = batches_of(&db.pool, 2);
    let job = || {
        let mut job = NewJob::new("test", json!({})).with_tenant(tenant);
        job.idempotency_key = Some("twice".into());
        job
    };
    let (first, second) = tokio::time::timeout(NO_HANG, async {
        tokio::join!(commit.submit(job()), commit.submit(job()))
    })
    .await
    .expect("every submission answered");
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.id, second.id);
    assert!(first.inserted != second.inserted, "{first:?} {second:?}");
    // One statement for the batch, then one for the second job alone.
    assert_eq!((commit.statements(), commit.jobs()), (2, 3));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 1);
    stop.cancel();
    tokio::time::timeout(NO_HANG, gatherer)
        .await
        .expect("the gatherer stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_one_job_at_a_time() {
    let db = TestDb::new().await;
    let (commit, gatherer, stop) = batches_of(&db.pool, 3);
    let job = |n: u32| NewJob::new("test", json!({ "n": n }));
    // The middle one names a tenant that does not exist: its row breaks the
    // batch's statement (a foreign key).
    let orphan = job(2).with_tenant(TenantId::new());
    let (first, second, third) = tokio::time::timeout(NO_HANG, async {
        tokio::join!(
            commit.submit(job(1)),
            commit.submit(orphan),
            commit.submit(job(3))
        )
    })
    .await
    .expect("every submission answered");
    let (first, third) = (first.unwrap(), third.unwrap());
    assert!(first.inserted && third.inserted);
    match second {
        Err(ApiError::Internal(detail)) => assert!(detail.contains("foreign key"), "{detail}"),
        other => panic!("the orphan job: {other:?}"),
    }
    // One statement for the batch, then one per job.
    assert_eq!((commit.statements(), commit.jobs()), (4, 6));
    let stored: Vec<JobId> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY payload->>'n'")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![first.id, third.id]);
    stop.cancel();
    tokio::time::timeout(NO_HANG, gatherer)
        .await
        .expect("the gatherer stops")
        .unwrap();
}
