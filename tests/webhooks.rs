//! Webhooks end to end against a real Postgres: deliveries enqueued by the
//! finish of chat jobs (completion, failure, cancellation), run by a
//! `Worker` with the `WebhookHandler` through `run_once`, received by local
//! axum receivers on 127.0.0.1 that check the signature and its timestamp;
//! retries, timeouts, dead deliveries, deleted webhooks, tenant isolation
//! and the API's validation. Retries are made claimable at once with a zero
//! backoff (never slept through).

mod common;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::{count, TestDb};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skipjack::api::{Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::chat::{store as chat_store, ChatPayload, CHAT_KIND};
use skipjack::ids::{JobId, TenantId};
use skipjack::llm::{self, LlmConfig};
use skipjack::queue::{self, Backoff, FinishItem, JobState, NewJob, Outcome};
use skipjack::tenants;
use skipjack::webhooks::{
    signature, store, WebhookConfig, WebhookHandler, ATTEMPT_HEADER, ID_HEADER, SIGNATURE_HEADER,
};
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

// ------------------------------------------------------------------ receiver

/// How a receiver answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Never answers.
    Hang,
    /// Always this status.
    Always(u16),
    /// 503 with `Retry-After: secs`.
    RetryAfter(u64),
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    attempt: String,
    /// The signature matched the secret and its timestamp was within 5
    /// minutes of the receiver's clock.
    verified: bool,
    event: Value,
}

#[derive(Clone)]
struct ReceiverState {
    mode: Mode,
    secret: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A local webhook receiver.
struct Receiver {
    url: String,
    secret: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let state = ReceiverState {
            mode,
            secret: Arc::new(Mutex::new(String::new())),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .ok();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            secret: state.secret,
            received: state.received,
            _stop: stop,
        }
    }

    fn set_secret(&self, secret: &str) {
        *self.secret.lock().unwrap() = secret.to_owned();
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secret = state.secret.lock().unwrap().clone();
    let now = chrono::Utc::now().timestamp();
    let verified = signature::verify(&secret, &get(SIGNATURE_HEADER), &body, now, 300).is_ok();
    let n = {
        let mut received = state.received.lock().unwrap();
        received.push(Received {
            id: get(ID_HEADER),
            attempt: get(ATTEMPT_HEADER),
            verified,
            event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        received.len()
    };
    match state.mode {
        Mode::FailFirst(fails) if n <= fails => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::FailFirst(_) => StatusCode::OK.into_response(),
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Always(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Mode::RetryAfter(secs) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, secs.to_string())],
        )
            .into_response(),
    }
}

// ------------------------------------------------------------------ helpers

async fn new_tenant(pool: &PgPool, name: &str) -> (TenantId, String) {
    let key = tenants::create_tenant_with_key(pool, name, None)
        .await
        .unwrap();
    (key.tenant, key.secret().to_owned())
}

/// Registers `receiver` for `tenant` and gives it the secret.
async fn webhook(pool: &PgPool, tenant: TenantId, receiver: &Receiver, events: &[&str]) -> Uuid {
    let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
    let created = store::create(pool, tenant, &receiver.url, &events)
        .await
        .unwrap();
    receiver.set_secret(&created.secret);
    created.webhook.id
}

const ALL: &[&str] = &["job.completed", "job.failed", "job.cancelled"];

async fn chat_job(pool: &PgPool, tenant: TenantId, message: &str) -> JobId {
    let (conversation, _, _) = chat_store::create_conversation(pool, tenant, "user")
        .await
        .unwrap();
    let payload = ChatPayload {
        user_id: "user".into(),
        message: message.into(),
        metadata: None,
        stream: false,
    };
    let job = NewJob::new(CHAT_KIND, serde_json::to_value(payload).unwrap())
        .with_tenant(tenant)
        .with_conversation(conversation)
        .with_priority(queue::Priority::new(5).unwrap());
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &job).await.unwrap().id
}

fn zero_backoff() -> Backoff {
    Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    }
}

fn worker_config(id: &str, backoff: Backoff) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        backoff,
        maintenance: None,
        queue_gauges: None,
        ..WorkerConfig::default()
    }
}

/// A worker running chat jobs with the simulated provider.
fn chat_worker(pool: &PgPool) -> Worker {
    let provider = llm::build_provider(&LlmConfig {
        simulated_latency_ms: 0,
        simulated_jitter_ms: Some(0),
        ..LlmConfig::default()
    })
    .unwrap();
    Worker::builder(pool.clone())
        .register(ChatHandler::new(pool.clone(), provider))
        .config(worker_config("chat-worker", zero_backoff()))
        .build()
        .unwrap()
}

/// A worker running webhook deliveries only.
fn webhook_worker(pool: &PgPool, config: WebhookConfig, backoff: Backoff) -> Worker {
    Worker::builder(pool.clone())
        .register(WebhookHandler::new(pool.clone(), config).unwrap())
        .config(worker_config("webhook-worker", backoff))
        .build()
        .unwrap()
}

fn quick(max_attempts: i32) -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_secs(5),
        max_attempts,
    }
}

/// Finishes chat job `id` (claimed now) with `outcome`.
async fn finish_chat(pool: &PgPool, id: JobId, outcome: Outcome) {
    let claimed = queue::claim(
        pool,
        "test",
        10,
        Duration::from_secs(30),
        &[CHAT_KIND.into()],
    )
    .await
    .unwrap();
    let job = claimed.iter().find(|j| j.id == id).expect("claimed");
    let states = queue::finish(
        pool,
        "test",
        &[FinishItem {
            job: id,
            attempt: job.attempt,
            outcome: &outcome,
        }],
        &Backoff::default(),
    )
    .await
    .unwrap();
    assert!(states[0].is_some_and(JobState::is_final));
}

/// The queued deliveries: (webhook id, event).
async fn deliveries(pool: &PgPool) -> Vec<(Uuid, Value)> {
    let rows: Vec<(Value,)> =
        sqlx::query_as("SELECT payload FROM jobs WHERE kind = 'webhook' ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(p,)| {
            (
                p["webhook_id"].as_str().unwrap().parse().unwrap(),
                p["event"].clone(),
            )
        })
        .collect()
}

async fn delivery_history(pool: &PgPool) -> Vec<(JobState, Option<Value>, Option<String>, i32)> {
    sqlx::query_as(
        "SELECT state, result, error, attempts FROM job_history WHERE kind = 'webhook' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn deliveries_total(outcome: &str) -> u64 {
    skipjack::metrics::metrics()
        .webhook_deliveries
        .with_label_values(&[outcome])
        .get()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_chat_job_is_delivered_signed_after_a_500() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let receiver = Receiver::start(Mode::FailFirst(1)).await;
    webhook(pool, tenant, &receiver, ALL).await;

    let job = chat_job(pool, tenant, "hello").await;
    assert_eq!(chat_worker(pool).run_once(10).await.unwrap().completed, 1);
    assert_eq!(deliveries(pool).await.len(), 1);

    let webhooks = webhook_worker(pool, quick(5), zero_backoff());
    let first = webhooks.run_once(10).await.unwrap();
    assert_eq!((first.claimed, first.retried), (1, 1));
    let second = webhooks.run_once(10).await.unwrap();
    assert_eq!((second.claimed, second.completed), (1, 1));
    assert_eq!(webhooks.run_once(10).await.unwrap().claimed, 0);

    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.verified), "{received:?}");
    assert_eq!(received[0].id, received[1].id, "one id across attempts");
    assert_eq!(
        (received[0].attempt.as_str(), received[1].attempt.as_str()),
        ("1", "2")
    );
    let event = &received[1].event;
    assert_eq!(event["id"], received[1].id.as_str());
    assert_eq!(event["type"], "job.completed");
    let data = &event["data"];
    assert_eq!(data["job_id"], job.to_string());
    assert_eq!(data["status"], "completed");
    assert_eq!(data["attempts"], 1);
    assert!(data["conversation_id"].is_string());
    assert!(data["response"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(data["usage"]["output_tokens"].as_i64().is_some());
    assert!(data["finished_at"].is_string());
    assert!(event["created_at"].is_string());

    // The delivery's history: completed on attempt 2, one 'retried' event.
    let history = delivery_history(pool).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, JobState::Completed);
    assert_eq!(history[0].3, 2);
    assert_eq!(history[0].1.as_ref().unwrap()["status"], 200);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM job_events e JOIN job_history h ON h.id = e.job_id \
             WHERE h.kind = 'webhook' AND e.event = 'retried' AND e.error LIKE '%HTTP 500%'"
        )
        .await,
        1
    );
    // A finished delivery makes no delivery of its own.
    assert_eq!(count(pool, "SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let receiver = Receiver::start(Mode::Hang).await;
    webhook(pool, tenant, &receiver, ALL).await;
    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(
        pool,
        job,
        Outcome::Failed {
            error: "boom".into(),
        },
    )
    .await;

    let config = WebhookConfig {
        timeout: Duration::from_millis(300),
        max_attempts: 5,
    };
    let report = webhook_worker(pool, config, zero_backoff())
        .run_once(10)
        .await
        .unwrap();
    assert_eq!((report.claimed, report.retried), (1, 1));
    assert_eq!(receiver.received().len(), 1);
    let (error, attempt): (String, i32) =
        sqlx::query_as("SELECT last_error, attempt FROM jobs WHERE kind = 'webhook'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(error.contains("timed out"), "{error}");
    assert!(!error.contains("127.0.0.1"), "no URL in errors: {error}");
    assert_eq!(attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_receiver_makes_a_dead_delivery_after_max_attempts() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let receiver = Receiver::start(Mode::Always(500)).await;
    webhook(pool, tenant, &receiver, ALL).await;
    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(
        pool,
        job,
        Outcome::Failed {
            error: "boom".into(),
        },
    )
    .await;

    let dead_before = deliveries_total("dead");
    let webhooks = webhook_worker(pool, quick(3), zero_backoff());
    assert_eq!(webhooks.run_once(10).await.unwrap().retried, 1);
    assert_eq!(webhooks.run_once(10).await.unwrap().retried, 1);
    assert_eq!(webhooks.run_once(10).await.unwrap().failed, 1);
    assert_eq!(webhooks.run_once(10).await.unwrap().claimed, 0);
    assert_eq!(receiver.received().len(), 3);
    assert!(deliveries_total("dead") > dead_before);

    let history = delivery_history(pool).await;
    assert_eq!(history.len(), 1);
    let (state, _, error, attempts) = &history[0];
    assert_eq!(*state, JobState::Failed);
    assert_eq!(*attempts, 3);
    let error = error.as_deref().unwrap();
    assert!(
        error.contains("undelivered after 3 attempts") && error.contains("HTTP 500"),
        "{error}"
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM job_events WHERE event = 'retried'"
        )
        .await,
        2
    );
    // The event was a failure of the chat job.
    assert_eq!(receiver.received()[0].event["type"], "job.failed");
    assert_eq!(receiver.received()[0].event["data"]["error"], "boom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_a_lower_bound_on_the_next_attempt() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let receiver = Receiver::start(Mode::RetryAfter(120)).await;
    webhook(pool, tenant, &receiver, ALL).await;
    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(
        pool,
        job,
        Outcome::Failed {
            error: "boom".into(),
        },
    )
    .await;
    let backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_secs(3600),
    };
    let report = webhook_worker(pool, quick(5), backoff)
        .run_once(10)
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    let delay: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE kind = 'webhook'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(delay > 100.0 && delay <= 120.0, "{delay}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_failure_and_cancellation_deliver_once_per_matching_webhook_per_tenant() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (a, _) = new_tenant(pool, "a").await;
    let (b, _) = new_tenant(pool, "b").await;
    let a_all = Receiver::start(Mode::Always(204)).await;
    let a_failed = Receiver::start(Mode::Always(200)).await;
    let b_all = Receiver::start(Mode::Always(200)).await;
    let w_a_all = webhook(pool, a, &a_all, ALL).await;
    let w_a_failed = webhook(pool, a, &a_failed, &["job.failed"]).await;
    let w_b_all = webhook(pool, b, &b_all, ALL).await;

    // Tenant a: one completed (by the chat worker), one failed, one cancelled.
    let completed = chat_job(pool, a, "complete me").await;
    assert_eq!(chat_worker(pool).run_once(10).await.unwrap().completed, 1);
    let failed = chat_job(pool, a, "fail me").await;
    finish_chat(pool, failed, Outcome::Failed { error: "no".into() }).await;
    let cancelled = chat_job(pool, a, "cancel me").await;
    queue::cancel(pool, cancelled, Some(a), "cancelled by the client")
        .await
        .unwrap();
    // Tenant b: one completed.
    let b_job = chat_job(pool, b, "b's").await;
    finish_chat(
        pool,
        b_job,
        Outcome::Completed {
            result: json!({"response": "hi b", "model": "m"}),
            usage: None,
        },
    )
    .await;

    let queued = deliveries(pool).await;
    let of = |w: Uuid| {
        let mut v: Vec<(String, String)> = queued
            .iter()
            .filter(|(id, _)| *id == w)
            .map(|(_, e)| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["data"]["job_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(queued.len(), 5, "{queued:?}");
    assert_eq!(
        of(w_a_all),
        vec![
            ("job.cancelled".to_owned(), cancelled.to_string()),
            ("job.completed".to_owned(), completed.to_string()),
            ("job.failed".to_owned(), failed.to_string()),
        ]
    );
    assert_eq!(
        of(w_a_failed),
        vec![("job.failed".to_owned(), failed.to_string())]
    );
    assert_eq!(
        of(w_b_all),
        vec![("job.completed".to_owned(), b_job.to_string())]
    );
    // Each delivery belongs to its webhook's tenant.
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM jobs j JOIN webhooks w ON w.id = (j.payload->>'webhook_id')::uuid \
             WHERE j.kind = 'webhook' AND j.tenant_id = w.tenant_id AND j.priority = 1"
        )
        .await,
        5
    );

    let report = webhook_worker(pool, quick(3), zero_backoff())
        .run_once(10)
        .await
        .unwrap();
    assert_eq!((report.claimed, report.completed), (5, 5));
    assert_eq!(a_all.received().len(), 3);
    assert_eq!(a_failed.received().len(), 1);
    let b_received = b_all.received();
    assert_eq!(b_received.len(), 1);
    assert_eq!(b_received[0].event["data"]["job_id"], b_job.to_string());
    assert_eq!(b_received[0].event["data"]["response"], "hi b");
    for r in a_all
        .received()
        .iter()
        .chain(&a_failed.received())
        .chain(&b_received)
    {
        assert!(r.verified, "{r:?}");
    }
    // Each receiver verified with its own secret: a's secret does not sign b's.
    let ids: std::collections::HashSet<String> = a_all
        .received()
        .iter()
        .chain(&a_failed.received())
        .chain(&b_received)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(ids.len(), 5, "every delivery has its own id");
    assert_eq!(count(pool, "SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_skips_its_pending_deliveries() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let receiver = Receiver::start(Mode::Always(200)).await;
    let id = webhook(pool, tenant, &receiver, ALL).await;
    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(pool, job, Outcome::Failed { error: "x".into() }).await;
    assert!(store::delete(pool, tenant, id).await.unwrap());

    let report = webhook_worker(pool, quick(3), zero_backoff())
        .run_once(10)
        .await
        .unwrap();
    assert_eq!(report.completed, 1);
    assert!(receiver.received().is_empty());
    let history = delivery_history(pool).await;
    assert_eq!(history[0].1.as_ref().unwrap()["skipped"], "webhook deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_no_delivery_and_the_trigger_outlives_partition_maintenance() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (tenant, _) = new_tenant(pool, "acme").await;
    let (other, _) = new_tenant(pool, "other").await;
    let receiver = Receiver::start(Mode::Always(200)).await;

    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(pool, job, Outcome::Failed { error: "x".into() }).await;
    assert!(deliveries(pool).await.is_empty());

    // Another tenant's webhook does not make this tenant's jobs deliver.
    webhook(pool, other, &receiver, ALL).await;
    let job = chat_job(pool, tenant, "hello").await;
    finish_chat(pool, job, Outcome::Failed { error: "x".into() }).await;
    assert!(deliveries(pool).await.is_empty());

    // Partitions created and dropped around the trigger.
    sqlx::query(
        "SELECT skipjack_create_history_partition(current_date + 60), \
                skipjack_drop_history_partition(current_date + 60), \
                skipjack_drop_history_partition(current_date - 1)",
    )
    .execute(pool)
    .await
    .unwrap();
    let job = chat_job(pool, other, "hello").await;
    finish_chat(pool, job, Outcome::Failed { error: "x".into() }).await;
    assert_eq!(deliveries(pool).await.len(), 1);
}

// ------------------------------------------------------------------ API

struct Answer {
    status: StatusCode,
    body: Value,
}

async fn call(router: &Router, method: &str, uri: &str, key: &str, body: Option<Value>) -> Answer {
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
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_creates_lists_and_deletes_per_tenant_and_refuses_bad_input() {
    let db = TestDb::new().await;
    let shutdown = CancellationToken::new();
    let api = Api::start(db.pool.clone(), ApiConfig::default(), shutdown.clone());
    let router = api.router();
    let (_, key_a) = new_tenant(&db.pool, "a").await;
    let (_, key_b) = new_tenant(&db.pool, "b").await;

    let created = call(
        &router,
        "POST",
        "/v1/webhooks",
        &key_a,
        Some(json!({"url": "https://example.com/hooks?t=1", "events": ["job.failed"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(created.body["secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    assert_eq!(created.body["events"], json!(["job.failed"]));
    let all = call(
        &router,
        "POST",
        "/v1/webhooks",
        &key_a,
        Some(json!({"url": "http://example.com/x"})),
    )
    .await;
    assert_eq!(all.status, StatusCode::CREATED);
    assert_eq!(
        all.body["events"],
        json!(["job.completed", "job.failed", "job.cancelled"])
    );

    let listed = call(&router, "GET", "/v1/webhooks", &key_a, None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let hooks = listed.body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert!(
        hooks.iter().all(|h| h.get("secret").is_none()),
        "no secrets listed"
    );
    assert_eq!(hooks[0]["id"], id.as_str());

    // Tenant b sees none of a's and cannot delete them.
    let listed_b = call(&router, "GET", "/v1/webhooks", &key_b, None).await;
    assert_eq!(listed_b.body["webhooks"], json!([]));
    let stolen = call(
        &router,
        "DELETE",
        &format!("/v1/webhooks/{id}"),
        &key_b,
        None,
    )
    .await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND);
    assert_eq!(stolen.body["error"]["code"], "not_found");

    let deleted = call(
        &router,
        "DELETE",
        &format!("/v1/webhooks/{id}"),
        &key_a,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = call(
        &router,
        "DELETE",
        &format!("/v1/webhooks/{id}"),
        &key_a,
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let bad_id = call(&router, "DELETE", "/v1/webhooks/not-a-uuid", &key_a, None).await;
    assert_eq!(bad_id.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Bad input: 422 with the error JSON, nothing stored.
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (body, code) in [
        (json!({"url": "ftp://example.com/"}), "invalid_url"),
        (json!({"url": "not a url"}), "invalid_url"),
        (
            json!({"url": "https://user:pw@example.com/"}),
            "invalid_url",
        ),
        (json!({"url": long}), "invalid_url"),
        (
            json!({"url": "https://example.com/", "events": []}),
            "invalid_events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["job.started"]}),
            "invalid_events",
        ),
    ] {
        let answer = call(&router, "POST", "/v1/webhooks", &key_a, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer.body["error"]["code"], code, "{body}");
        assert!(answer.body["error"]["message"].is_string());
    }
    let missing = call(&router, "POST", "/v1/webhooks", &key_a, Some(json!({}))).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM webhooks").await, 1);

    // The per-tenant cap.
    for _ in 1..skipjack::webhooks::MAX_WEBHOOKS_PER_TENANT {
        let ok = call(
            &router,
            "POST",
            "/v1/webhooks",
            &key_a,
            Some(json!({"url": "https://example.com/"})),
        )
        .await;
        assert_eq!(ok.status, StatusCode::CREATED);
    }
    let over = call(
        &router,
        "POST",
        "/v1/webhooks",
        &key_a,
        Some(json!({"url": "https://example.com/"})),
    )
    .await;
    assert_eq!(over.status, StatusCode::CONFLICT);
    assert_eq!(over.body["error"]["code"], "too_many_webhooks");
    // b has its own allowance.
    let b_ok = call(
        &router,
        "POST",
        "/v1/webhooks",
        &key_b,
        Some(json!({"url": "https://example.com/"})),
    )
    .await;
    assert_eq!(b_ok.status, StatusCode::CREATED);

    // The OpenAPI document describes the routes.
    let doc = call(&router, "GET", "/openapi.json", &key_a, None).await;
    assert!(doc.body["paths"]["/v1/webhooks"]["post"].is_object());
    assert!(doc.body["paths"]["/v1/webhooks/{id}"]["delete"].is_object());

    shutdown.cancel();
    api.stop().await;
}
