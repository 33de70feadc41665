//! The `webhook` job kind: one attempt POSTs one signed event.
//!
//! A 2xx answer is a delivery. Any other answer, a timeout or a connection
//! error is retried with the queue's backoff (at least the receiver's
//! `Retry-After`); the attempt that reaches the worker's
//! `SKIPJACK_WEBHOOK_MAX_ATTEMPTS` fails the job instead: a dead delivery,
//! `failed` in job_history. A delivery whose webhook was deleted completes
//! at once as skipped. Neither the URL (it may carry a token) nor the
//! secret is ever logged or written to an error.

use super::{signature, store, ATTEMPT_HEADER, ID_HEADER, SIGNATURE_HEADER, WEBHOOK_KIND};
use crate::metrics::metrics;
use crate::queue::Outcome;
use crate::worker::{Handler, JobContext};
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::error::Error as _;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long an idle pooled connection to a receiver is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest error text kept from a failure.
const MAX_ERROR_CHARS: usize = 300;

/// The payload of a `webhook` job, as the trigger writes it.
#[derive(Debug, Deserialize)]
struct Delivery {
    webhook_id: Uuid,
    event: Value,
}

/// Why an attempt did not deliver.
struct Failure {
    error: String,
    retry_after: Option<Duration>,
}

/// Delivers webhook events: one HTTP client for the process, the database
/// for each delivery's target.
pub struct WebhookHandler {
    pool: PgPool,
    client: reqwest::Client,
    config: WebhookConfig,
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the webhook HTTP client: {0}")]
pub struct ClientError(String);

impl WebhookHandler {
    /// The job kind it handles.
    pub const KIND: &'static str = WEBHOOK_KIND;

    /// A handler with its own connection pool to receivers. Redirects are
    /// not followed: a 3xx is a failed attempt, so a delivery never lands
    /// somewhere its tenant did not register.
    pub fn new(pool: PgPool, config: WebhookConfig) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("skipjack-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(WebhookHandler {
            pool,
            client,
            config,
        })
    }

    /// The settings it delivers with.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// One POST of `body` to `target`; `Ok` with the status on a 2xx.
    async fn post(
        &self,
        target: &store::Target,
        event_id: &str,
        attempt: i32,
        body: Vec<u8>,
    ) -> Result<u16, Failure> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature::sign(&target.secret, timestamp, &body);
        let response = self
            .client
            .post(&target.url)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(ID_HEADER, event_id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| Failure {
                error: describe(&e),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        Err(Failure {
            error: format!("receiver answered HTTP {}", status.as_u16()),
            retry_after: crate::llm::http::retry_after(response.headers(), chrono::Utc::now()),
        })
    }
}

impl Handler for WebhookHandler {
    fn kind(&self) -> &str {
        Self::KIND
    }

    async fn handle(&self, ctx: JobContext) -> Outcome {
        let m = metrics();
        let attempt = ctx.job.attempt;
        let delivery: Delivery = match serde_json::from_value(ctx.job.payload.clone()) {
            Ok(d) => d,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("not a webhook delivery payload: {e}"),
                }
            }
        };
        if attempt > self.config.max_attempts {
            // Rescued after its last attempt's worker died: no more tries.
            m.webhook_deliveries.with_label_values(&["dead"]).inc();
            return Outcome::Failed {
                error: format!(
                    "delivery abandoned after {} attempts",
                    self.config.max_attempts
                ),
            };
        }
        let target = match store::target(&self.pool, delivery.webhook_id).await {
            Ok(Some(target)) => target,
            Ok(None) => {
                m.webhook_deliveries.with_label_values(&["skipped"]).inc();
                return Outcome::Completed {
                    result: json!({"skipped": "webhook deleted"}),
                    usage: None,
                };
            }
            Err(e) => {
                // Not the receiver's fault: retried, not counted against it
                // beyond the attempt itself.
                return Outcome::Retry {
                    error: format!("reading the webhook: {e}"),
                    retry_after: None,
                };
            }
        };
        let event_id = delivery.event["id"].as_str().unwrap_or_default().to_owned();
        let body = match serde_json::to_vec(&delivery.event) {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("serialising the event: {e}"),
                }
            }
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = self.post(&target, &event_id, attempt, body) => result,
            // The worker drops this attempt anyway; say why if it asks.
            _ = ctx.cancel.cancelled() => Err(Failure {
                error: "delivery interrupted (lease lost or shutdown)".to_owned(),
                retry_after: None,
            }),
        };
        m.webhook_delivery_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(status) => {
                m.webhook_deliveries.with_label_values(&["delivered"]).inc();
                Outcome::Completed {
                    result: json!({"delivered": true, "status": status, "attempt": attempt}),
                    usage: None,
                }
            }
            Err(failure) if attempt >= self.config.max_attempts => {
                m.webhook_deliveries.with_label_values(&["dead"]).inc();
                tracing::warn!(job_id = %ctx.job.id, webhook_id = %delivery.webhook_id, attempt,
                               error = %failure.error, "webhook delivery dead");
                Outcome::Failed {
                    error: format!(
                        "undelivered after {attempt} attempts; last: {}",
                        failure.error
                    ),
                }
            }
            Err(failure) => {
                m.webhook_deliveries.with_label_values(&["retried"]).inc();
                Outcome::Retry {
                    error: failure.error,
                    retry_after: failure.retry_after,
                }
            }
        }
    }
}

/// A transport failure and its causes, without the URL.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Delivery settings, flattened into the worker's arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Longest a webhook delivery may take (connect, send, answer) before
    /// it counts as failed and is retried.
    #[arg(long, env = "SKIPJACK_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_timeout_ms: u64,
    /// Attempts of a delivery before it gives up and ends `failed` in
    /// job_history (a dead delivery). Retries wait the queue's backoff
    /// (SKIPJACK_RETRY_BASE_MS, SKIPJACK_RETRY_MAX_SECONDS), or longer when
    /// the receiver answers with Retry-After.
    #[arg(long, env = "SKIPJACK_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub webhook_max_attempts: i32,
}

impl WebhookArgs {
    /// The webhook settings these arguments describe.
    pub fn webhook_config(&self) -> WebhookConfig {
        WebhookConfig {
            timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
            max_attempts: self.webhook_max_attempts.clamp(1, 100),
        }
    }
}

/// How deliveries are made.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Longest one delivery attempt may take.
    pub timeout: Duration,
    /// Attempts before a delivery is dead (1..=100).
    pub max_attempts: i32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout: Duration::from_secs(10),
            max_attempts: 8,
        }
    }
}
