//! The load generator's HTTP client: the calls a virtual user makes
//! (submit, long-poll or event stream, queue depth) with their outcomes
//! classified, over one shared connection pool.

use chrono::{DateTime, Utc};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use skipjack::llm::settings::Secret;
use std::time::Duration;

/// Longest a POST may take before it counts as an error.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a long-poll's `wait` for its request timeout.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// `Retry-After` assumed when a 429 carries none (or an unreadable one).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One client for the whole run: every user shares its pool.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: String,
    key: Secret,
}

/// What a `POST /v1/chat` came back with.
#[derive(Debug)]
pub enum Submitted {
    /// 202: the turn is queued.
    Accepted {
        job_id: String,
        conversation_id: Option<String>,
    },
    /// 429: come back after `retry_after`.
    Rejected { retry_after: Duration },
    /// Anything else; the string names the kind of failure.
    Failed(String),
}

/// A job as `GET /v1/chat/{id}` shows it (the fields the checks need).
#[derive(Clone, Debug, Deserialize)]
pub struct JobStatus {
    pub status: String,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// When the job's first attempt started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: Option<i32>,
}

/// The events of one `GET /v1/chat/{id}/stream` connection; an error is a
/// short, id-free kind (`stream: connection`, `stream: bad event`).
pub type Events = BoxStream<'static, Result<Event, String>>;

impl JobStatus {
    /// True once the job will not change any more.
    pub fn is_finished(&self) -> bool {
        !matches!(self.status.as_str(), "queued" | "processing")
    }
}

/// `GET /v1/queue`.
#[derive(Debug, Deserialize)]
pub struct QueueDepth {
    pub total: i64,
    pub processing: i64,
    pub oldest_queued_age_seconds: f64,
}

#[derive(Debug, Deserialize)]
struct Accepted {
    job_id: String,
    conversation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Messages {
    messages: Vec<Message>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8000`) sized for `users`
    /// virtual users: each holds at most one request at a time, so the pool
    /// keeps up to one idle connection per user (plus a few for the
    /// sampler), which lets every user reuse its keep-alive connection
    /// instead of reconnecting on every turn.
    pub fn new(base: &str, key: Secret, users: usize) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(users + 8)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Submits one turn. The idempotency key makes a retry after a
    /// transport error safe: it can never queue the turn twice.
    pub async fn submit(
        &self,
        user_id: &str,
        message: &str,
        idempotency_key: &str,
        priority: u8,
    ) -> Submitted {
        self.submit_turn(user_id, message, idempotency_key, priority, false)
            .await
    }

    /// [`submit`](Self::submit), with `stream`: ask for the reply to be
    /// published as it is written (`"stream": true`).
    pub async fn submit_turn(
        &self,
        user_id: &str,
        message: &str,
        idempotency_key: &str,
        priority: u8,
        stream: bool,
    ) -> Submitted {
        let mut body = serde_json::json!({
            "user_id": user_id,
            "message": message,
            "idempotency_key": idempotency_key,
            "priority": priority,
        });
        if stream {
            body["stream"] = true.into();
        }
        let response = match self
            .http
            .post(format!("{}/v1/chat", self.base))
            .bearer_auth(self.key.expose())
            .timeout(SUBMIT_TIMEOUT)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Submitted::Failed(transport_kind("submit", &e)),
        };
        match response.status() {
            StatusCode::ACCEPTED => match response.json::<Accepted>().await {
                Ok(a) => Submitted::Accepted {
                    job_id: a.job_id,
                    conversation_id: a.conversation_id,
                },
                Err(e) => Submitted::Failed(transport_kind("submit", &e)),
            },
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .unwrap_or(DEFAULT_RETRY_AFTER);
                // Read the body so the connection can be reused.
                let _ = response.bytes().await;
                Submitted::Rejected { retry_after }
            }
            status => {
                let _ = response.bytes().await;
                Submitted::Failed(format!("submit: HTTP {}", status.as_u16()))
            }
        }
    }

    /// Long-polls a job for up to `wait`.
    pub async fn poll(&self, job_id: &str, wait: Duration) -> Result<JobStatus, String> {
        let response = self
            .http
            .get(format!(
                "{}/v1/chat/{job_id}?wait={}",
                self.base,
                wait.as_secs_f64()
            ))
            .bearer_auth(self.key.expose())
            .timeout(wait + POLL_SLACK)
            .send()
            .await
            .map_err(|e| transport_kind("poll", &e))?;
        let status = response.status();
        if status != StatusCode::OK {
            let _ = response.bytes().await;
            return Err(format!("poll: HTTP {}", status.as_u16()));
        }
        response
            .json::<JobStatus>()
            .await
            .map_err(|e| transport_kind("poll", &e))
    }

    /// Opens `GET /v1/chat/{job_id}/stream`, resuming after `last_event_id`
    /// when given. The request has no overall timeout (a stream lasts as
    /// long as the turn); a connection that sends nothing at all (not even
    /// the keep-alive comment) for `idle` ends with `stream: idle timeout`.
    pub async fn stream(
        &self,
        job_id: &str,
        last_event_id: Option<&str>,
        idle: Duration,
    ) -> Result<Events, String> {
        let mut request = self
            .http
            .get(format!("{}/v1/chat/{job_id}/stream", self.base))
            .bearer_auth(self.key.expose())
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_kind("stream", &e))?;
        let status = response.status();
        if status != StatusCode::OK {
            let _ = response.bytes().await;
            return Err(format!("stream: HTTP {}", status.as_u16()));
        }
        // The idle bound is on the bytes: comments count as life, though
        // the parser drops them.
        let bytes = futures_util::stream::unfold(
            Some(response.bytes_stream().boxed()),
            move |state| async move {
                let mut bytes = state?;
                match tokio::time::timeout(idle, bytes.next()).await {
                    Ok(Some(chunk)) => {
                        Some((chunk.map_err(|e| transport_kind("stream", &e)), Some(bytes)))
                    }
                    Ok(None) => None,
                    Err(_) => Some((Err("stream: idle timeout".to_owned()), None)),
                }
            },
        );
        Ok(bytes
            .eventsource()
            .map(|event| {
                event.map_err(|e| match e {
                    EventStreamError::Transport(kind) => kind,
                    EventStreamError::Utf8(_) | EventStreamError::Parser(_) => {
                        "stream: bad event".to_owned()
                    }
                })
            })
            .boxed())
    }

    /// The queue's depth now.
    pub async fn queue(&self) -> Result<QueueDepth, String> {
        let response = self
            .http
            .get(format!("{}/v1/queue", self.base))
            .bearer_auth(self.key.expose())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| transport_kind("queue", &e))?;
        let status = response.status();
        if status != StatusCode::OK {
            let _ = response.bytes().await;
            return Err(format!("queue: HTTP {}", status.as_u16()));
        }
        response
            .json::<QueueDepth>()
            .await
            .map_err(|e| transport_kind("queue", &e))
    }

    /// A conversation's stored messages, in order.
    pub async fn messages(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<super::check::StoredMessage>, String> {
        let response = self
            .http
            .get(format!(
                "{}/v1/conversations/{conversation_id}/messages",
                self.base
            ))
            .bearer_auth(self.key.expose())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| transport_kind("messages", &e))?;
        let status = response.status();
        if status != StatusCode::OK {
            let _ = response.bytes().await;
            return Err(format!("messages: HTTP {}", status.as_u16()));
        }
        let body = response
            .json::<Messages>()
            .await
            .map_err(|e| transport_kind("messages", &e))?;
        Ok(body
            .messages
            .into_iter()
            .map(|m| super::check::StoredMessage {
                role: m.role,
                content: m.content,
            })
            .collect())
    }
}

/// A short, id-free name for a transport failure, to count by kind.
fn transport_kind(call: &str, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "bad body"
    } else if e.is_body() || e.is_request() {
        "connection"
    } else {
        "other"
    };
    format!("{call}: {what}")
}
