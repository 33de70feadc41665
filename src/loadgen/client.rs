//! The load generator's HTTP client: the three calls a virtual user makes
//! (submit, long-poll, queue depth) with their outcomes classified, over one
//! shared connection pool.

use crate::llm::config::Secret;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::Deserialize;
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
#[derive(Debug, Deserialize)]
pub struct JobStatus {
    pub status: String,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
}

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
        let body = serde_json::json!({
            "user_id": user_id,
            "message": message,
            "idempotency_key": idempotency_key,
            "priority": priority,
        });
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
