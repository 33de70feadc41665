//! The worker's webhook delivery settings: each a `--flag` and an
//! environment variable (README, Configuration).

use std::time::Duration;

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
