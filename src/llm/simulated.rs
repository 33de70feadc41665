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

use super::settings::LlmConfig;
use super::{
    estimate_usage, ChatRequest, ChatResponse, ErrorClass, LlmError, OnDelta, Provider, Role,
};

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
    /// Pieces of a streamed reply (at least 1).
    chunks: u32,
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
            chunks: super::settings::DEFAULT_SIMULATED_CHUNKS,
        }
    }

    /// Streams replies in `chunks` pieces (at least 1).
    pub fn with_chunks(mut self, chunks: u32) -> Self {
        self.chunks = chunks.max(1);
        self
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
        provider.with_chunks(cfg.simulated_chunks)
    }

    /// What a call draws before it waits: its latency and whether it fails.
    /// Drawn before awaiting: the thread-local RNG is not Send.
    fn draw(&self) -> (Duration, bool) {
        let mut rng = rand::thread_rng();
        (self.draw_latency(&mut rng), rng.gen_bool(self.failure_rate))
    }

    fn injected_failure(&self) -> LlmError {
        LlmError::retryable(
            ErrorClass::Simulated,
            format!("simulated: injected failure (rate {})", self.failure_rate),
        )
    }

    fn response(&self, req: &ChatRequest, content: String) -> ChatResponse {
        let usage = estimate_usage(
            req.effective_system(self.default_system.as_deref()),
            &req.messages,
            &content,
        );
        ChatResponse {
            content,
            usage,
            model: NAME.to_owned(),
        }
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
            let content = reply(req)?;
            let (delay, fail) = self.draw();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                return Err(self.injected_failure());
            }
            Ok(self.response(req, content))
        })
    }

    /// The same reply in `chunks` pieces, the k-th at k/chunks of the
    /// latency; an injected failure comes after half of them, as when a
    /// real stream breaks.
    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let content = reply(req)?;
            let (delay, fail) = self.draw();
            let pieces = split(&content, self.chunks as usize);
            let start = tokio::time::Instant::now();
            let n = pieces.len() as u32;
            for (k, piece) in (1u32..).zip(&pieces) {
                if fail && k > n / 2 {
                    return Err(self.injected_failure());
                }
                tokio::time::sleep_until(start + delay * k / n).await;
                on_delta(piece);
            }
            if fail {
                return Err(self.injected_failure());
            }
            Ok(self.response(req, content))
        })
    }
}

/// `echo(N): MESSAGE` for `req`, or the error a real API gives for a
/// conversation without messages.
fn reply(req: &ChatRequest) -> Result<String, LlmError> {
    let turns: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| m.content.as_str())
        .collect();
    match turns.last() {
        Some(last) => Ok(format!("echo({}): {}", turns.len(), last)),
        // Real APIs reject an empty conversation too; failing here keeps
        // the simulated provider honest about that.
        None => Err(LlmError::permanent(
            ErrorClass::Client,
            "simulated: request has no user or assistant message",
        )),
    }
}

/// `text` cut into at most `n` pieces of nearly equal length in characters
/// (never inside a character), none empty.
fn split(text: &str, n: usize) -> Vec<&str> {
    let chars = text.chars().count();
    let n = n.clamp(1, chars.max(1));
    let mut bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    bounds.push(text.len());
    (0..n)
        .map(|k| &text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;
    use std::sync::Mutex;

    #[test]
    fn split_keeps_every_character_in_order() {
        for text in ["", "a", "echo(1): héllo wörld ✓", "0123456789"] {
            for n in [1, 2, 3, 8, 40] {
                let pieces = split(text, n);
                assert_eq!(pieces.concat(), text, "{text:?} in {n}");
                assert!(pieces.len() <= n.max(1));
                if !text.is_empty() {
                    assert!(pieces.iter().all(|p| !p.is_empty()), "{pieces:?}");
                }
            }
        }
        assert_eq!(split("0123456789", 40).len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn streamed_pieces_are_spread_over_the_latency() {
        let provider =
            SimulatedProvider::new(Duration::from_millis(2000), Duration::ZERO, 0.0).with_chunks(4);
        let req = ChatRequest {
            system: None,
            messages: vec![ChatMessage::user("a message of some length")],
        };
        let start = tokio::time::Instant::now();
        let seen = Mutex::new(Vec::new());
        let on_delta = |piece: &str| {
            seen.lock()
                .unwrap()
                .push((start.elapsed().as_millis(), piece.to_owned()))
        };
        let response = provider.chat_stream(&req, &on_delta).await.unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            [500, 1000, 1500, 2000]
        );
        let text: String = seen.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(text, response.content);
        assert_eq!(response.content, "echo(1): a message of some length");
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_failure_breaks_the_stream_halfway() {
        let provider =
            SimulatedProvider::new(Duration::from_millis(800), Duration::ZERO, 1.0).with_chunks(4);
        let req = ChatRequest {
            system: None,
            messages: vec![ChatMessage::user("hello there")],
        };
        let pieces = Mutex::new(0);
        let on_delta = |_: &str| *pieces.lock().unwrap() += 1;
        let error = provider.chat_stream(&req, &on_delta).await.unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(*pieces.lock().unwrap(), 2);
    }
}
