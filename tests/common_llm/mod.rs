//! A local mock LLM upstream for the provider tests: an axum server on
//! 127.0.0.1:0 that records every request (path, headers, JSON body) and
//! answers whatever the test's responder says, after an optional delay.
//!
//! Real LLM APIs are never contacted; each test starts its own server, so
//! tests run in parallel without sharing state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
    /// When the request arrived (its headers and body read).
    #[allow(dead_code)] // read by the provider budget tests only
    pub at: Instant,
    /// Tokens the answer reported (input + output of its `usage`, in the
    /// Anthropic or OpenAI form), if it reported any.
    #[allow(dead_code)] // read by the provider budget tests only
    pub tokens: Option<u64>,
}

impl Recorded {
    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// What the mock answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering (a slow or hanging upstream).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// A successful Anthropic Messages answer.
    pub fn anthropic_ok(text: &str) -> Self {
        Self::json(
            200,
            json!({
                "id": "msg_test",
                "type": "message",
                "role": "assistant",
                "model": "claude-mock",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 7}
            }),
        )
    }

    /// A successful OpenAI chat completion.
    pub fn openai_ok(text: &str) -> Self {
        Self::json(
            200,
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": "gpt-mock",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}
            }),
        )
    }
}

type Responder = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct Shared {
    responder: Box<Responder>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock upstream; stops when dropped.
pub struct MockServer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Start a server answering every request with `responder`.
    pub async fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            responder: Box::new(responder),
            requests: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock server");
        let addr: SocketAddr = listener.local_addr().expect("mock server address");
        let task = tokio::spawn(async move {
            // The server runs until the test drops it.
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("mock lock").clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().expect("mock lock").len()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut recorded = Recorded {
        method,
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
        tokens: None,
    };
    let reply = (shared.responder)(&recorded);
    recorded.tokens = reported_tokens(&reply.body);
    // Record before the delay so that a test sees slow requests arrive.
    shared.requests.lock().expect("mock lock").push(recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response =
        Response::builder().status(StatusCode::from_u16(reply.status).expect("valid status"));
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response
        .body(Body::from(reply.body))
        .expect("valid mock response")
}

/// Input + output tokens of an answer's `usage` (Anthropic's
/// `input_tokens`/`output_tokens` or OpenAI's `prompt_tokens`/
/// `completion_tokens`).
fn reported_tokens(body: &str) -> Option<u64> {
    let usage = serde_json::from_str::<Value>(body)
        .ok()?
        .get("usage")?
        .clone();
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    match (field("input_tokens"), field("output_tokens")) {
        (Some(i), Some(o)) => Some(i + o),
        _ => Some(field("prompt_tokens")? + field("completion_tokens")?),
    }
}

/// A local address nothing listens on (bound, then closed at once).
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}
