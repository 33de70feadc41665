//! The simulated provider: no network, a configurable latency distribution and
//! failure rate, and a deterministic reply.
//!
//! It is the default provider so that the whole system (API, workers, load
//! generator, dashboards) runs on a laptop without a key, and it is what tests
//! and benchmarks measure the queue with. Its reply is a public contract
//! (the load generator and tests check every reply against it):
//!
//! ```text
//! echo(N): MESSAGE
//! ```
//!
//! where N counts the user and assistant messages it received (the current
//! one included, system prompts not) and MESSAGE is the last of them, i.e. the
//! current user message. Turn k of a conversation whose earlier turns all
//! completed therefore answers `echo(2k-1): ...`, which lets a test see at a
//! glance whether history was lost, duplicated or reordered. Once a
//! conversation outgrows the history budget (`SKIPJACK_HISTORY_MAX_TOKENS`),
//! the worker sends only its newest turns, and N stops growing at the size
//! of that window plus one.

use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;

use super::config::LlmConfig;
use super::{estimate_usage, ChatRequest, ChatResponse, ErrorClass, LlmError, Provider, Role};

const NAME: &str = "simulated";

/// A fake model with a latency of `mean ± jitter` (uniform, never negative)
/// and a failure probability.
#[derive(Clone, Debug)]
pub struct SimulatedProvider {
    /// Centre of the latency distribution.
    mean: Duration,
    /// Half-width of the latency distribution.
    jitter: Duration,
    /// Probability of a `Retryable { class: Simulated }` error per call,
    /// clamped to 0.0..=1.0.
    failure_rate: f64,
    /// System prompt used when a request brings none; only affects the input
    /// token estimate, as a real provider would bill it.
    default_system: Option<String>,
}

impl SimulatedProvider {
    /// A simulated model; `failure_rate` is clamped to 0.0..=1.0 (NaN = 0).
    pub fn new(mean: Duration, jitter: Duration, failure_rate: f64) -> Self {
        let failure_rate = if failure_rate.is_nan() {
            0.0
        } else {
            failure_rate.clamp(0.0, 1.0)
        };
        Self {
            mean,
            jitter,
            failure_rate,
            default_system: None,
        }
    }

    /// From `SKIPJACK_SIMULATED_*`; the jitter defaults to half the mean
    /// (so 0 when the latency is 0).
    pub fn from_config(cfg: &LlmConfig) -> Self {
        let jitter_ms = cfg
            .simulated_jitter_ms
            .unwrap_or(cfg.simulated_latency_ms / 2);
        let mut provider = Self::new(
            Duration::from_millis(cfg.simulated_latency_ms),
            Duration::from_millis(jitter_ms),
            cfg.simulated_failure_rate,
        );
        provider.default_system = cfg.model_settings().default_system;
        provider
    }

    /// One latency sample, uniform over `mean ± jitter`, floored at zero.
    fn draw_latency(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.mean;
        }
        let low = self.mean.saturating_sub(self.jitter);
        let high = self.mean.saturating_add(self.jitter);
        rng.gen_range(low..=high)
    }
}

impl Provider for SimulatedProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let turns: Vec<&str> = req
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| m.content.as_str())
                .collect();
            let Some(last) = turns.last() else {
                // Real APIs reject an empty conversation too; failing here
                // keeps the simulated provider honest about that.
                return Err(LlmError::permanent(
                    ErrorClass::Client,
                    "simulated: request has no user or assistant message",
                ));
            };
            // Draw everything before awaiting: the thread-local RNG is not Send.
            let (delay, fail) = {
                let mut rng = rand::thread_rng();
                (self.draw_latency(&mut rng), rng.gen_bool(self.failure_rate))
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                return Err(LlmError::retryable(
                    ErrorClass::Simulated,
                    format!("simulated: injected failure (rate {})", self.failure_rate),
                ));
            }
            let content = format!("echo({}): {}", turns.len(), last);
            let usage = estimate_usage(
                req.effective_system(self.default_system.as_deref()),
                &req.messages,
                &content,
            );
            Ok(ChatResponse {
                content,
                usage,
                model: NAME.to_owned(),
            })
        })
    }
}
