//! A per-process cap on provider requests per second
//! (`SKIPJACK_LLM_MAX_RPS`), as a wrapper around any [`Provider`].
//!
//! Why: a worker runs hundreds of calls concurrently, and an upstream
//! account's rate limit is usually lower than that. Spacing requests in the
//! process is cheaper than collecting 429s and backing off; the operator
//! divides the account's limit by the number of worker processes.
//!
//! The limiter hands out evenly spaced start times (one every `1 / max_rps`
//! seconds, no burst): each caller reserves the next free slot under a short
//! lock and then sleeps until it, so waiting callers start in arrival order
//! and no lock is held while sleeping. A caller that gives up while waiting
//! leaves its slot unused, which only errs on the side of fewer requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{ChatRequest, ChatResponse, EndpointStats, LlmError, OnDelta, Provider};

/// Evenly spaced start times at a fixed rate.
#[derive(Debug)]
pub struct IntervalLimiter {
    /// Time between two starts.
    interval: Duration,
    /// Earliest start time not yet handed out.
    next: Mutex<Instant>,
}

impl IntervalLimiter {
    /// A limiter for `per_second` starts per second; `None` when
    /// `per_second` is 0, negative or not finite (= unlimited).
    pub fn per_second(per_second: f64) -> Option<Self> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return None;
        }
        let interval = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        Some(Self {
            interval,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Wait for the next free slot.
    pub async fn acquire(&self) {
        let now = Instant::now();
        let slot = {
            // A poisoned lock still holds a valid instant.
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// A provider whose calls start no faster than its limiter allows.
pub struct RateLimited {
    /// The provider being capped.
    inner: Arc<dyn Provider>,
    /// The shared schedule of start times.
    limiter: IntervalLimiter,
}

impl RateLimited {
    /// Cap `inner` with `limiter`.
    pub fn new(inner: Arc<dyn Provider>, limiter: IntervalLimiter) -> Self {
        Self { inner, limiter }
    }
}

impl Provider for RateLimited {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            self.limiter.acquire().await;
            self.inner.chat(req).await
        })
    }

    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            self.limiter.acquire().await;
            self.inner.chat_stream(req, on_delta).await
        })
    }

    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.inner.endpoint_stats()
    }
}

/// `inner` capped at `max_rps` requests per second, or `inner` itself when
/// `max_rps` is 0 (unlimited).
pub fn wrap(inner: Arc<dyn Provider>, max_rps: f64) -> Arc<dyn Provider> {
    match IntervalLimiter::per_second(max_rps) {
        Some(limiter) => Arc::new(RateLimited::new(inner, limiter)),
        None => inner,
    }
}
