//! The upstream pool: several endpoints of one provider (base URLs and/or
//! keys) behind one [`Provider`], with a balancing strategy and passive health
//! checking.
//!
//! Why: one account's rate limit or one self-hosted GPU server is often the
//! bottleneck of the whole job system; spreading requests over several, and
//! stepping around the one that is failing, keeps jobs flowing without an
//! external load balancer.
//!
//! ## Choosing an endpoint
//! - `round-robin`: each available endpoint in turn.
//! - `least-outstanding`: the available endpoint with the fewest requests in
//!   flight (counted with atomics, released by an RAII guard even when the
//!   caller drops the future); ties go round robin.
//! - `weighted`: smooth weighted round robin as in nginx: every pick adds each
//!   endpoint's weight to its running score, takes the highest score and
//!   subtracts the total weight from it. Weights 3:1 give A A B A, A A B A...
//!   interleaved rather than in bursts.
//!
//! ## Provider budgets
//! With `SKIPJACK_LLM_RPM` / `SKIPJACK_LLM_TPM` set ([`super::budget`]) every
//! call first reserves a request and its token estimate from the picked
//! endpoint's budget; when that endpoint has none left, the other available
//! endpoints are tried in turn, so budget on any endpoint is used before
//! anyone waits. When none has budget the call waits in place once if budget
//! frees within [`IN_PLACE_WAIT`], and otherwise is not sent at all:
//! [`LlmError::Throttled`] gives the job back to the queue until then. After
//! the call the reservation is settled with the reported usage.
//!
//! ## Ejection (a per-endpoint circuit breaker)
//! Retryable failures (connect, timeout, 5xx, 429: the upstream's fault, not
//! the request's) count up per endpoint; a success resets the count;
//! permanent errors (a bad request) say nothing about the endpoint's health
//! and leave it alone. After `eject_after` consecutive failures the endpoint
//! is ejected for `eject_for`. When the cool-down is over it is *half-open*:
//! it is chosen again, a success closes the breaker, and a failure ejects it
//! again at once (its count is still at the threshold). If every endpoint is
//! ejected, the one whose ejection ends soonest is used rather than failing
//! outright: the queue's retries are a better judge than an empty pool.
//!
//! The pool does not retry a failed request on another endpoint: the job
//! queue retries with backoff and `Retry-After`, and two retry layers would
//! multiply the load on an upstream that is already struggling.
//!
//! Time is `tokio::time::Instant`, so tests may drive the cool-down with a
//! paused tokio clock; with short `eject_for` real time works too.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::anthropic::AnthropicProvider;
use super::budget::{self, Budget, Reservation, Reserve};
use super::http::build_client;
use super::openai::OpenAiProvider;
use super::settings::{redact_url, LlmConfig, ModelSettings, ProviderKind, Strategy};
use super::ConfigError;
use super::{ChatRequest, ChatResponse, ErrorClass, LlmError, OnDelta, Provider};
use crate::metrics::metrics;

/// A call that finds no provider budget waits in place, once, when budget
/// frees within this long; otherwise it gives its job back to the queue
/// ([`LlmError::Throttled`]) rather than hold a worker slot.
pub const IN_PLACE_WAIT: Duration = Duration::from_millis(200);

/// Counters of one endpoint, as reported by [`Provider::endpoint_stats`].
/// Holds the URL without credentials, never a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStats {
    /// Position in the pool (distinguishes endpoints sharing a URL with
    /// different keys).
    pub index: usize,
    /// Base URL, user-info and query removed.
    pub url: String,
    /// Configured weight.
    pub weight: u32,
    /// Requests sent to this endpoint so far.
    pub requests: u64,
    /// Retryable failures so far.
    pub failures: u64,
    /// Requests in flight right now.
    pub in_flight: usize,
    /// Whether the endpoint is ejected right now.
    pub ejected: bool,
}

/// How the pool balances and when it ejects.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Balancing strategy.
    pub strategy: Strategy,
    /// Consecutive retryable failures before ejection; 0 never ejects.
    pub eject_after: u32,
    /// Ejection cool-down.
    pub eject_for: Duration,
}

/// One endpoint to put in a pool.
pub struct PoolMember {
    /// Label for stats and logs: a URL without credentials.
    pub label: String,
    /// The provider that talks to this endpoint.
    pub provider: Arc<dyn Provider>,
    /// Weight for the `weighted` strategy (0 is treated as 1).
    pub weight: u32,
}

/// Several endpoints behind one [`Provider`].
pub struct Pool {
    /// Name of the member providers (they are all of one kind).
    name: &'static str,
    /// The endpoints, never empty.
    endpoints: Vec<Endpoint>,
    /// Strategy and ejection settings.
    options: PoolOptions,
    /// Round-robin cursor; also rotates least-outstanding ties.
    cursor: AtomicUsize,
    /// Smooth weighted round robin running scores, one per endpoint. A mutex
    /// because a pick updates all of them together; held for a few
    /// arithmetic operations, never across an await.
    scores: Mutex<Vec<i64>>,
    /// Origin of the ejection deadlines stored as nanoseconds in atomics.
    epoch: Instant,
    /// Provider budgets shared with the other processes, if configured.
    budget: Option<Budgeted>,
}

/// A pool's provider budgets and what it needs to estimate a call's tokens.
struct Budgeted {
    budget: Budget,
    settings: ModelSettings,
}

/// One endpoint and its health.
struct Endpoint {
    label: String,
    provider: Arc<dyn Provider>,
    weight: u32,
    /// Requests sent (stats).
    requests: AtomicU64,
    /// Retryable failures (stats).
    failures: AtomicU64,
    /// Requests in flight, for least-outstanding.
    in_flight: AtomicUsize,
    /// Consecutive retryable failures; reset by a success.
    consecutive_failures: AtomicU32,
    /// Ejected until `epoch + this` nanoseconds; 0 = not ejected.
    ejected_until: AtomicU64,
}

/// Decrements an endpoint's in-flight count when the request ends, however it
/// ends (completion, error, or the caller dropping the future).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool over `members`; `None` when there are none.
    pub fn new(members: Vec<PoolMember>, options: PoolOptions) -> Option<Self> {
        let name = members.first()?.provider.name();
        let endpoints: Vec<Endpoint> = members
            .into_iter()
            .map(|m| Endpoint {
                label: m.label,
                provider: m.provider,
                weight: m.weight.max(1),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
            })
            .collect();
        Some(Self {
            name,
            scores: Mutex::new(vec![0; endpoints.len()]),
            endpoints,
            options,
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
            budget: None,
        })
    }

    /// This pool with every call reserved from `budget` first (its
    /// endpoints in pool order); `settings` give the `max_tokens` and
    /// default system prompt of the token estimate.
    pub fn with_budget(mut self, budget: Budget, settings: ModelSettings) -> Self {
        self.budget = Some(Budgeted { budget, settings });
        self
    }

    /// The endpoint labels a [`Budget`] for `cfg` uses, in pool order.
    pub fn budget_labels(cfg: &LlmConfig) -> Result<Vec<String>, ConfigError> {
        Ok(cfg
            .endpoints()?
            .iter()
            .enumerate()
            .map(|(i, spec)| budget::endpoint_label(&redact_url(&spec.base_url), i))
            .collect())
    }

    /// The endpoint for the next call, and its budget reservation: the
    /// picked endpoint when it has budget, else the first other available
    /// endpoint that has. When none has, waits in place once if budget
    /// frees within [`IN_PLACE_WAIT`], else answers
    /// [`LlmError::Throttled`].
    async fn admit(&self, req: &ChatRequest) -> Result<(usize, Option<Reservation>), LlmError> {
        let first = self.pick(Instant::now());
        let Some(b) = &self.budget else {
            return Ok((first, None));
        };
        let estimate = super::estimate_usage(
            req.effective_system(b.settings.default_system.as_deref()),
            &req.messages,
            "",
        );
        let tokens = estimate.input_tokens.saturating_add(b.settings.max_tokens);
        let now = self.ticks(Instant::now());
        let n = self.endpoints.len();
        let candidates: Vec<usize> = std::iter::once(first)
            .chain(
                (1..n)
                    .map(|k| (first + k) % n)
                    .filter(|&i| !self.is_ejected(&self.endpoints[i], now)),
            )
            .collect();
        let mut waited = false;
        loop {
            let mut shortest: Option<Duration> = None;
            let mut too_large = 0;
            for &i in &candidates {
                match b.budget.try_reserve(i, tokens).await {
                    Ok(Reserve::Granted(reservation)) => return Ok((i, Some(reservation))),
                    Ok(Reserve::Wait(wait)) => {
                        shortest = Some(shortest.map_or(wait, |s| s.min(wait)))
                    }
                    Ok(Reserve::TooLarge { burst }) => too_large = too_large.max(burst),
                    Err(e) => {
                        return Err(LlmError::retryable(
                            ErrorClass::Connect,
                            format!("reading the provider budget: {e}"),
                        ))
                    }
                }
            }
            let Some(wait) = shortest else {
                return Err(LlmError::permanent(
                    ErrorClass::Client,
                    format!(
                        "the call may use {tokens} tokens (estimated input + SKIPJACK_LLM_MAX_TOKENS), more than the token budget lets through at once ({too_large}); raise SKIPJACK_LLM_TPM or SKIPJACK_LLM_BUDGET_BURST"
                    ),
                ));
            };
            if waited || wait > IN_PLACE_WAIT {
                return Err(budget::throttled(wait));
            }
            waited = true;
            metrics()
                .llm_budget_waits
                .with_label_values(&["in_place"])
                .inc();
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
        }
    }

    /// Settle a call's reservation with the usage it reported (a failed
    /// call: its input estimate). A failure to write is logged: the budget
    /// then stays charged with the reservation, the safe side.
    async fn settle(
        &self,
        reservation: Option<Reservation>,
        req: &ChatRequest,
        result: &Result<ChatResponse, LlmError>,
    ) {
        let (Some(b), Some(reservation)) = (&self.budget, reservation) else {
            return;
        };
        let used = match result {
            Ok(response) => response
                .usage
                .input_tokens
                .saturating_add(response.usage.output_tokens),
            Err(_) => {
                super::estimate_usage(
                    req.effective_system(b.settings.default_system.as_deref()),
                    &req.messages,
                    "",
                )
                .input_tokens
            }
        };
        if let Err(error) = b.budget.settle(&reservation, used).await {
            tracing::warn!(%error, endpoint = b.budget.label(reservation.endpoint), "settling a provider budget reservation failed; it stays charged in full");
        }
    }

    /// The HTTP endpoints of `cfg` (Anthropic or OpenAI-compatible), sharing
    /// one `reqwest::Client` built here.
    pub fn from_config(cfg: &LlmConfig) -> Result<Self, ConfigError> {
        let client = build_client(cfg.timeout())?;
        let settings = cfg.model_settings();
        let members = cfg
            .endpoints()?
            .into_iter()
            .map(|spec| {
                let provider: Arc<dyn Provider> = match cfg.provider {
                    ProviderKind::Anthropic => {
                        let key = spec.key.as_ref().ok_or(ConfigError::MissingKey {
                            provider: "anthropic",
                            setting: "ANTHROPIC_API_KEY",
                        })?;
                        Arc::new(AnthropicProvider::new(
                            client.clone(),
                            &spec.base_url,
                            key,
                            settings.clone(),
                        )?)
                    }
                    ProviderKind::Openai => Arc::new(OpenAiProvider::new(
                        client.clone(),
                        &spec.base_url,
                        spec.key.as_ref(),
                        settings.clone(),
                    )?),
                    ProviderKind::Simulated => {
                        return Err(ConfigError::Invalid {
                            setting: "SKIPJACK_LLM_PROVIDER",
                            message: "the simulated provider has no upstream endpoints".into(),
                        })
                    }
                };
                Ok(PoolMember {
                    label: redact_url(&spec.base_url),
                    provider,
                    weight: spec.weight,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let options = PoolOptions {
            strategy: cfg.strategy,
            eject_after: cfg.eject_after,
            eject_for: cfg.eject_for(),
        };
        Self::new(members, options).ok_or(ConfigError::Invalid {
            setting: "SKIPJACK_LLM_BASE_URL",
            message: "no endpoint configured".into(),
        })
    }

    /// Nanoseconds since the pool's epoch, as stored in `ejected_until`
    /// (offset by one so that 0 can mean "not ejected").
    fn ticks(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn is_ejected(&self, endpoint: &Endpoint, now: u64) -> bool {
        endpoint.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Pick the endpoint for the next request.
    fn pick(&self, now: Instant) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let now = self.ticks(now);
        let available: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| !self.is_ejected(e, now))
            .collect();
        if !available.contains(&true) {
            // Everything is ejected: use the endpoint that will be back
            // first rather than refuse the request.
            return (0..n)
                .min_by_key(|&i| self.endpoints[i].ejected_until.load(Ordering::Relaxed))
                .unwrap_or(0);
        }
        let rotated = || {
            let start = self.cursor.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(move |i| (start.wrapping_add(i)) % n)
                .filter(|&i| available[i])
        };
        match self.options.strategy {
            Strategy::RoundRobin => rotated().next().unwrap_or(0),
            Strategy::LeastOutstanding => rotated()
                .min_by_key(|&i| self.endpoints[i].in_flight.load(Ordering::Relaxed))
                .unwrap_or(0),
            Strategy::Weighted => self.pick_weighted(&available),
        }
    }

    /// Smooth weighted round robin over the available endpoints.
    fn pick_weighted(&self, available: &[bool]) -> usize {
        // A poisoned lock only means another thread panicked between two
        // additions; the scores are still usable numbers.
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !available[i] {
                continue;
            }
            let weight = i64::from(endpoint.weight);
            scores[i] += weight;
            total += weight;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let best = best.unwrap_or(0);
        scores[best] -= total;
        best
    }

    /// Record the outcome of one request on `endpoint`.
    fn record(&self, endpoint: &Endpoint, result: &Result<ChatResponse, LlmError>) {
        match result {
            Ok(_) => {
                endpoint.consecutive_failures.store(0, Ordering::Relaxed);
                // Non-zero means ejected at some point since the last success
                // (the deadline is cleared here, not when it passes).
                if endpoint.ejected_until.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(
                        provider = self.name,
                        endpoint = %endpoint.label,
                        "LLM endpoint healthy again, readmitted"
                    );
                }
            }
            Err(e) if e.is_retryable() => {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                let count = endpoint
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if self.options.eject_after > 0 && count >= self.options.eject_after {
                    let now = Instant::now();
                    let until = self.ticks(now + self.options.eject_for);
                    let before = endpoint.ejected_until.swap(until, Ordering::Relaxed);
                    if before <= self.ticks(now) {
                        tracing::warn!(
                            provider = self.name,
                            endpoint = %endpoint.label,
                            consecutive_failures = count,
                            cool_down_ms = self.options.eject_for.as_millis() as u64,
                            error_class = e.class().as_str(),
                            "LLM endpoint ejected"
                        );
                    }
                }
            }
            Err(_) => {}
        }
    }
}

impl Provider for Pool {
    fn name(&self) -> &'static str {
        self.name
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let (index, reservation) = self.admit(req).await?;
            let endpoint = &self.endpoints[index];
            endpoint.requests.fetch_add(1, Ordering::Relaxed);
            let result = {
                let _in_flight = InFlight::enter(&endpoint.in_flight);
                endpoint.provider.chat(req).await
            };
            self.settle(reservation, req, &result).await;
            self.record(endpoint, &result);
            if self.endpoints.len() > 1 {
                // Say which upstream failed; the label has no credentials.
                return result.map_err(|e| with_endpoint(e, &endpoint.label));
            }
            result
        })
    }

    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let (index, reservation) = self.admit(req).await?;
            let endpoint = &self.endpoints[index];
            endpoint.requests.fetch_add(1, Ordering::Relaxed);
            let result = {
                let _in_flight = InFlight::enter(&endpoint.in_flight);
                endpoint.provider.chat_stream(req, on_delta).await
            };
            self.settle(reservation, req, &result).await;
            self.record(endpoint, &result);
            if self.endpoints.len() > 1 {
                return result.map_err(|e| with_endpoint(e, &endpoint.label));
            }
            result
        })
    }

    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        let now = self.ticks(Instant::now());
        self.endpoints
            .iter()
            .enumerate()
            .map(|(index, e)| EndpointStats {
                index,
                url: e.label.clone(),
                weight: e.weight,
                requests: e.requests.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
                in_flight: e.in_flight.load(Ordering::Relaxed),
                ejected: self.is_ejected(e, now),
            })
            .collect()
    }
}

/// Append the endpoint label to an error message.
fn with_endpoint(err: LlmError, label: &str) -> LlmError {
    match err {
        LlmError::Retryable {
            class,
            message,
            retry_after,
        } => LlmError::Retryable {
            class,
            message: format!("{message} (endpoint {label})"),
            retry_after,
        },
        LlmError::Permanent { class, message } => LlmError::Permanent {
            class,
            message: format!("{message} (endpoint {label})"),
        },
        throttled @ LlmError::Throttled { .. } => throttled,
    }
}
