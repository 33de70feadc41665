//! LLM configuration: the `SKIPJACK_LLM_*`, `SKIPJACK_SIMULATED_*` and
//! `*_API_KEY` settings, parsed once at the edge by clap and validated before
//! any provider is built.
//!
//! Kept apart from the providers so that the binaries can `#[command(flatten)]`
//! one [`LlmConfig`] and tests can build one literally
//! (`LlmConfig { .., ..Default::default() }`) without touching the process
//! environment.
//!
//! Keys are wrapped in [`Secret`], whose `Debug` prints `***`, and their
//! arguments set `hide_env_values` so that neither `{:?}` of the config nor
//! `--help` can print them.
//!
//! ## Upstream endpoints
//!
//! `SKIPJACK_LLM_BASE_URL` and the provider's key variable may each hold a
//! comma-separated list. Endpoints are formed like this:
//!
//! - one URL, N keys: N endpoints on that URL, one per key (spreading load
//!   over several accounts of one provider);
//! - N URLs, zero or one key: N endpoints, all using that key (or none);
//! - N URLs, N keys: zipped, key *i* goes with URL *i*;
//! - anything else is a configuration error.
//!
//! Zipping rather than taking every (URL, key) combination is deliberate: with
//! two different upstreams (say OpenRouter and a self-hosted vLLM) a cross
//! product would send each key to a host it does not belong to.
//!
//! ## Provider budgets
//!
//! `SKIPJACK_LLM_RPM` and `SKIPJACK_LLM_TPM` (requests and tokens per minute)
//! are enforced across every worker process together, per endpoint and
//! model ([`super::budget`], docs/provider-limits.md). Each holds one value
//! for every endpoint, or a comma-separated list with one value per
//! endpoint in the order above (like `SKIPJACK_LLM_WEIGHTS`); 0 means no
//! limit. `SKIPJACK_LLM_BUDGET_BURST` is the fraction of each limit that may
//! go at once after a quiet spell.

use super::error::ConfigError;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default Anthropic API base URL (`/v1/messages` is appended).
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// Default OpenAI-compatible base URL (`/chat/completions` is appended).
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Default Anthropic model.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
/// Default OpenAI-compatible model.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";
/// Default `max_tokens` sent upstream.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// Default whole-request timeout; LLM answers are slow, but a minute without
/// a byte means something is wrong.
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 60.0;
/// Default number of pieces of a streamed simulated reply.
pub const DEFAULT_SIMULATED_CHUNKS: u32 = 8;
/// Default mean latency of the simulated provider: about a short real answer.
pub const DEFAULT_SIMULATED_LATENCY_MS: u64 = 500;
/// Default consecutive retryable failures before an endpoint is ejected.
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// Default ejection cool-down.
pub const DEFAULT_EJECT_SECONDS: f64 = 30.0;
/// Default fraction of a provider budget usable at once
/// (`SKIPJACK_LLM_BUDGET_BURST`).
pub const DEFAULT_BUDGET_BURST: f64 = 0.05;
/// Upper bound of the connect timeout: a TCP/TLS handshake that takes longer
/// than this will not finish, whatever the request timeout is.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which model backend to use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProviderKind {
    /// No network: configurable latency and failure rate, `echo(N): MESSAGE`.
    #[default]
    Simulated,
    /// Anthropic Messages API.
    Anthropic,
    /// Any OpenAI-compatible chat completions server.
    #[value(name = "openai")]
    Openai,
}

impl ProviderKind {
    /// The provider's name, as used for `Provider::name`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Simulated => "simulated",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
        }
    }
}

/// How the upstream pool picks an endpoint for each request.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each healthy endpoint in turn.
    #[default]
    RoundRobin,
    /// The healthy endpoint with the fewest requests in flight; adapts to a
    /// slow upstream without any configuration.
    LeastOutstanding,
    /// Smooth weighted round robin (nginx style) by `SKIPJACK_LLM_WEIGHTS`.
    Weighted,
}

/// A credential. Its `Debug` and `Display` print `***` so that it cannot leak
/// through `{:?}` of a config or a log line; call [`Secret::expose`] at the
/// one place the value is put on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for building the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Everything the LLM layer reads from the environment or the command line.
///
/// Each field is `--flag` and an environment variable; the names of the
/// provider, base URL, model, key and simulated settings are a public
/// contract (the README's Configuration table).
#[derive(clap::Args, Clone, Debug)]
pub struct LlmConfig {
    /// Model backend.
    #[arg(long = "llm-provider", env = "SKIPJACK_LLM_PROVIDER", value_enum, default_value_t = ProviderKind::Simulated)]
    pub provider: ProviderKind,

    /// Upstream base URL(s), comma-separated; default per provider.
    #[arg(long = "llm-base-url", env = "SKIPJACK_LLM_BASE_URL")]
    pub base_url: Option<String>,

    /// Model name; default per provider.
    #[arg(long = "llm-model", env = "SKIPJACK_LLM_MODEL")]
    pub model: Option<String>,

    /// Anthropic API key(s), comma-separated. Prefer the environment variable:
    /// a flag is visible in `ps`.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<Secret>,

    /// OpenAI-compatible API key(s), comma-separated; optional because local
    /// servers (vLLM, Ollama) need none.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// `max_tokens` of every request: bounds cost and latency per answer.
    #[arg(long = "llm-max-tokens", env = "SKIPJACK_LLM_MAX_TOKENS", default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: u32,

    /// Whole-request timeout in seconds (fractions allowed); a timed-out call
    /// is a retryable error.
    #[arg(long = "llm-timeout-seconds", env = "SKIPJACK_LLM_TIMEOUT_SECONDS", default_value_t = DEFAULT_TIMEOUT_SECONDS)]
    pub timeout_seconds: f64,

    /// System prompt used when a request brings none.
    #[arg(long = "llm-system-prompt", env = "SKIPJACK_LLM_SYSTEM_PROMPT")]
    pub system_prompt: Option<String>,

    /// Simulated provider: mean latency in milliseconds (0 = answer at once).
    #[arg(long = "simulated-latency-ms", env = "SKIPJACK_SIMULATED_LATENCY_MS", default_value_t = DEFAULT_SIMULATED_LATENCY_MS)]
    pub simulated_latency_ms: u64,

    /// Simulated provider: latency spread; each call draws uniformly from
    /// mean ± jitter (never below 0). Default: half the mean.
    #[arg(long = "simulated-jitter-ms", env = "SKIPJACK_SIMULATED_JITTER_MS")]
    pub simulated_jitter_ms: Option<u64>,

    /// Simulated provider: probability (0.0..=1.0) that a call fails with a
    /// retryable error.
    #[arg(
        long = "simulated-failure-rate",
        env = "SKIPJACK_SIMULATED_FAILURE_RATE",
        default_value_t = 0.0
    )]
    pub simulated_failure_rate: f64,

    /// Simulated provider, streaming calls: the reply comes in this many
    /// pieces spread evenly over the latency (fewer when the reply is
    /// shorter); an injected failure strikes after half of them.
    #[arg(long = "simulated-chunks", env = "SKIPJACK_SIMULATED_CHUNKS", default_value_t = DEFAULT_SIMULATED_CHUNKS, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub simulated_chunks: u32,

    /// How the pool picks an endpoint when several are configured.
    #[arg(long = "llm-strategy", env = "SKIPJACK_LLM_STRATEGY", value_enum, default_value_t = Strategy::RoundRobin)]
    pub strategy: Strategy,

    /// Integer weights, comma-separated, one per endpoint (per base URL when
    /// several URLs are given), for the `weighted` strategy.
    #[arg(long = "llm-weights", env = "SKIPJACK_LLM_WEIGHTS")]
    pub weights: Option<String>,

    /// Consecutive retryable failures (connect, timeout, 5xx, 429) after which
    /// an endpoint is ejected from the pool; 0 never ejects.
    #[arg(long = "llm-eject-after", env = "SKIPJACK_LLM_EJECT_AFTER", default_value_t = DEFAULT_EJECT_AFTER)]
    pub eject_after: u32,

    /// How long an ejected endpoint rests before it may be tried again
    /// (seconds, fractions allowed).
    #[arg(long = "llm-eject-seconds", env = "SKIPJACK_LLM_EJECT_SECONDS", default_value_t = DEFAULT_EJECT_SECONDS)]
    pub eject_seconds: f64,

    /// Per-process cap on provider requests per second (fractions allowed);
    /// 0 = unlimited. Spaces one process's calls evenly; for an account's
    /// limit across a scaled-out fleet use `SKIPJACK_LLM_RPM` /
    /// `SKIPJACK_LLM_TPM`, which hold for all processes together.
    #[arg(
        long = "llm-max-rps",
        env = "SKIPJACK_LLM_MAX_RPS",
        default_value_t = 0.0
    )]
    pub max_rps: f64,

    /// Requests per minute allowed per endpoint and model, across every
    /// worker process together: one value for all endpoints or one per
    /// endpoint, comma-separated; 0 or unset = no limit. Needs Postgres
    /// schema 11.
    #[arg(long = "llm-rpm", env = "SKIPJACK_LLM_RPM")]
    pub rpm: Option<String>,

    /// Tokens (input + output) per minute allowed per endpoint and model,
    /// across every worker process together; same form as
    /// `SKIPJACK_LLM_RPM`. A call reserves its estimate (input estimate +
    /// `max_tokens`) and is corrected by the reported usage.
    #[arg(long = "llm-tpm", env = "SKIPJACK_LLM_TPM")]
    pub tpm: Option<String>,

    /// Fraction of each per-minute budget that may be used at once after a
    /// quiet spell (0 < f <= 0.5). The sustained rate is the limit times
    /// (1 - f), so that no 60-second window ever sees more than the limit.
    #[arg(
        long = "llm-budget-burst",
        env = "SKIPJACK_LLM_BUDGET_BURST",
        default_value_t = DEFAULT_BUDGET_BURST
    )]
    pub budget_burst: f64,

    /// Price table for the estimated-cost metric, US dollars per million
    /// tokens: `MODEL=INPUT/OUTPUT,…`, `*=INPUT/OUTPUT` for any other model
    /// (see `llm::cost`). Unset: tokens are counted, cost stays 0.
    #[arg(long = "llm-price-per-mtok", env = "SKIPJACK_LLM_PRICE_PER_MTOK")]
    pub price_per_mtok: Option<String>,
}

impl Default for LlmConfig {
    /// The same values as the clap defaults, without reading the environment.
    fn default() -> Self {
        Self {
            provider: ProviderKind::Simulated,
            base_url: None,
            model: None,
            anthropic_api_key: None,
            openai_api_key: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            system_prompt: None,
            simulated_latency_ms: DEFAULT_SIMULATED_LATENCY_MS,
            simulated_jitter_ms: None,
            simulated_failure_rate: 0.0,
            simulated_chunks: DEFAULT_SIMULATED_CHUNKS,
            strategy: Strategy::RoundRobin,
            weights: None,
            eject_after: DEFAULT_EJECT_AFTER,
            eject_seconds: DEFAULT_EJECT_SECONDS,
            max_rps: 0.0,
            rpm: None,
            tpm: None,
            budget_burst: DEFAULT_BUDGET_BURST,
            price_per_mtok: None,
        }
    }
}

/// The per-request model parameters shared by all endpoints of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSettings {
    /// Model name sent upstream.
    pub model: String,
    /// `max_tokens` sent upstream.
    pub max_tokens: u32,
    /// System prompt used when a request brings none
    /// (`SKIPJACK_LLM_SYSTEM_PROMPT`).
    pub default_system: Option<String>,
}

/// One upstream endpoint as configured: where, with which key, how heavy.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    /// Base URL without trailing slash.
    pub base_url: String,
    /// The key for this endpoint, if any.
    pub key: Option<Secret>,
    /// Smooth weighted round robin weight (1 unless configured).
    pub weight: u32,
}

impl LlmConfig {
    /// Check ranges that clap's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                setting,
                message: message.into(),
            }
        }
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            return Err(invalid(
                "SKIPJACK_LLM_TIMEOUT_SECONDS",
                format!("must be a positive number, got {}", self.timeout_seconds),
            ));
        }
        if !(0.0..=1.0).contains(&self.simulated_failure_rate) {
            return Err(invalid(
                "SKIPJACK_SIMULATED_FAILURE_RATE",
                format!(
                    "must be within 0.0..=1.0, got {}",
                    self.simulated_failure_rate
                ),
            ));
        }
        if !(self.eject_seconds.is_finite() && self.eject_seconds >= 0.0) {
            return Err(invalid(
                "SKIPJACK_LLM_EJECT_SECONDS",
                format!("must be a non-negative number, got {}", self.eject_seconds),
            ));
        }
        if !(self.max_rps.is_finite() && self.max_rps >= 0.0) {
            return Err(invalid(
                "SKIPJACK_LLM_MAX_RPS",
                format!("must be a non-negative number, got {}", self.max_rps),
            ));
        }
        if self.max_tokens == 0 {
            return Err(invalid("SKIPJACK_LLM_MAX_TOKENS", "must be at least 1"));
        }
        if !(self.budget_burst.is_finite() && self.budget_burst > 0.0 && self.budget_burst <= 0.5) {
            return Err(invalid(
                "SKIPJACK_LLM_BUDGET_BURST",
                format!("must be within (0, 0.5], got {}", self.budget_burst),
            ));
        }
        self.budget_limits()?;
        self.prices()?;
        Ok(())
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        // validate() guarantees a positive finite value; the fallback only
        // covers a config that skipped validation.
        Duration::try_from_secs_f64(self.timeout_seconds)
            .unwrap_or(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECONDS))
    }

    /// The ejection cool-down.
    pub fn eject_for(&self) -> Duration {
        Duration::try_from_secs_f64(self.eject_seconds)
            .unwrap_or(Duration::from_secs_f64(DEFAULT_EJECT_SECONDS))
    }

    /// The model name, or the provider's default.
    pub fn model_or_default(&self) -> String {
        match (&self.model, self.provider) {
            (Some(m), _) if !m.trim().is_empty() => m.trim().to_owned(),
            (_, ProviderKind::Openai) => DEFAULT_OPENAI_MODEL.to_owned(),
            (_, ProviderKind::Anthropic) => DEFAULT_ANTHROPIC_MODEL.to_owned(),
            (_, ProviderKind::Simulated) => "simulated".to_owned(),
        }
    }

    /// The parsed price table (empty when unset).
    pub fn prices(&self) -> Result<super::cost::PriceTable, ConfigError> {
        super::cost::PriceTable::parse(self.price_per_mtok.as_deref().unwrap_or(""))
    }

    /// The token and cost meter of this configuration's provider and model.
    pub fn meter(&self) -> Result<super::cost::TokenMeter, ConfigError> {
        let model = self.model_or_default();
        let price = self.prices()?.price_of(&model);
        Ok(super::cost::TokenMeter::new(
            self.provider.as_str(),
            model,
            price,
        ))
    }

    /// What every HTTP and simulated provider needs besides the network.
    pub fn model_settings(&self) -> ModelSettings {
        ModelSettings {
            model: self.model_or_default(),
            max_tokens: self.max_tokens,
            default_system: self.system_prompt.clone().filter(|s| !s.trim().is_empty()),
        }
    }

    /// The upstream endpoints of an HTTP provider, paired as described in the
    /// module docs and weighted by `SKIPJACK_LLM_WEIGHTS`.
    pub fn endpoints(&self) -> Result<Vec<EndpointSpec>, ConfigError> {
        let (default_url, key_setting, keys) = match self.provider {
            ProviderKind::Anthropic => (
                DEFAULT_ANTHROPIC_BASE_URL,
                "ANTHROPIC_API_KEY",
                &self.anthropic_api_key,
            ),
            ProviderKind::Openai => (
                DEFAULT_OPENAI_BASE_URL,
                "OPENAI_API_KEY",
                &self.openai_api_key,
            ),
            ProviderKind::Simulated => return Ok(Vec::new()),
        };
        let urls: Vec<String> = match &self.base_url {
            Some(list) if !list.trim().is_empty() => split_list(list)
                .map(|u| normalize_url(&u))
                .collect::<Result<_, _>>()?,
            _ => vec![default_url.to_owned()],
        };
        if urls.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "SKIPJACK_LLM_BASE_URL",
                message: "no URL given".into(),
            });
        }
        let keys: Vec<Secret> = keys
            .as_ref()
            .map(|k| split_list(k.expose()).map(Secret).collect())
            .unwrap_or_default();
        if keys.is_empty() && self.provider == ProviderKind::Anthropic {
            return Err(ConfigError::MissingKey {
                provider: "anthropic",
                setting: key_setting,
            });
        }
        let pairs: Vec<(String, Option<Secret>)> = match (urls.len(), keys.len()) {
            (_, 0) => urls.into_iter().map(|u| (u, None)).collect(),
            (_, 1) => urls
                .into_iter()
                .map(|u| (u, keys.first().cloned()))
                .collect(),
            (1, _) => keys
                .into_iter()
                .map(|k| (urls[0].clone(), Some(k)))
                .collect(),
            (u, k) if u == k => urls.into_iter().zip(keys.into_iter().map(Some)).collect(),
            (u, k) => return Err(ConfigError::EndpointMismatch { urls: u, keys: k }),
        };
        let weights = self.parse_weights(pairs.len())?;
        Ok(pairs
            .into_iter()
            .zip(weights)
            .map(|((base_url, key), weight)| EndpointSpec {
                base_url,
                key,
                weight,
            })
            .collect())
    }

    /// Whether `SKIPJACK_LLM_RPM` or `SKIPJACK_LLM_TPM` sets any limit.
    pub fn has_budget(&self) -> bool {
        self.budget_limits()
            .map(|limits| limits.iter().any(|l| l.rpm > 0 || l.tpm > 0))
            .unwrap_or(false)
    }

    /// The per-minute limits of each endpoint, in [`LlmConfig::endpoints`]
    /// order (empty for the simulated provider, which has no endpoints).
    pub fn budget_limits(&self) -> Result<Vec<BudgetLimits>, ConfigError> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.provider == ProviderKind::Simulated {
            if set(&self.rpm) || set(&self.tpm) {
                return Err(ConfigError::Invalid {
                    setting: "SKIPJACK_LLM_RPM",
                    message: "provider budgets need an HTTP provider (anthropic or openai)".into(),
                });
            }
            return Ok(Vec::new());
        }
        let n = self.endpoints()?.len();
        let rpm = parse_per_endpoint("SKIPJACK_LLM_RPM", self.rpm.as_deref(), n)?;
        let tpm = parse_per_endpoint("SKIPJACK_LLM_TPM", self.tpm.as_deref(), n)?;
        let limits: Vec<BudgetLimits> = rpm
            .into_iter()
            .zip(tpm)
            .map(|(rpm, tpm)| BudgetLimits {
                rpm,
                tpm,
                burst: self.budget_burst,
            })
            .collect();
        for l in &limits {
            if l.rpm == 1 {
                return Err(ConfigError::Invalid {
                    setting: "SKIPJACK_LLM_RPM",
                    message: "must be 0 (no limit) or at least 2".into(),
                });
            }
            if l.tpm > 0 && l.token_burst() < u64::from(self.max_tokens) + 1 {
                return Err(ConfigError::Invalid {
                    setting: "SKIPJACK_LLM_TPM",
                    message: format!(
                        "a burst of {} tokens (SKIPJACK_LLM_TPM x SKIPJACK_LLM_BUDGET_BURST) cannot hold one request of SKIPJACK_LLM_MAX_TOKENS = {}",
                        l.token_burst(),
                        self.max_tokens
                    ),
                });
            }
        }
        Ok(limits)
    }

    fn parse_weights(&self, endpoints: usize) -> Result<Vec<u32>, ConfigError> {
        let Some(list) = self.weights.as_deref().filter(|w| !w.trim().is_empty()) else {
            return Ok(vec![1; endpoints]);
        };
        let weights: Vec<u32> = split_list(list)
            .map(|w| match w.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::Invalid {
                    setting: "SKIPJACK_LLM_WEIGHTS",
                    message: format!("{w:?} is not a positive integer"),
                }),
            })
            .collect::<Result<_, _>>()?;
        if weights.len() != endpoints {
            return Err(ConfigError::Invalid {
                setting: "SKIPJACK_LLM_WEIGHTS",
                message: format!("{} weights for {endpoints} endpoints", weights.len()),
            });
        }
        if self.strategy != Strategy::Weighted {
            tracing::warn!("SKIPJACK_LLM_WEIGHTS is set but SKIPJACK_LLM_STRATEGY is not `weighted`: weights are ignored");
        }
        Ok(weights)
    }
}

/// The per-minute limits of one endpoint (0 = no limit), see
/// [`LlmConfig::budget_limits`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetLimits {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens (input + output) per minute.
    pub tpm: u64,
    /// Fraction of each limit usable at once.
    pub burst: f64,
}

impl BudgetLimits {
    /// Requests that may start at once after a quiet spell: at least 1,
    /// below the limit.
    pub fn request_burst(&self) -> u64 {
        burst_of(self.rpm, self.burst)
    }

    /// Tokens that may be reserved at once after a quiet spell: the largest
    /// single reservation the budget can ever grant.
    pub fn token_burst(&self) -> u64 {
        burst_of(self.tpm, self.burst)
    }
}

fn burst_of(limit: u64, fraction: f64) -> u64 {
    if limit < 2 {
        return 0;
    }
    ((limit as f64 * fraction).floor() as u64).clamp(1, limit - 1)
}

/// One non-negative integer for every endpoint, or one per endpoint.
fn parse_per_endpoint(
    setting: &'static str,
    list: Option<&str>,
    endpoints: usize,
) -> Result<Vec<u64>, ConfigError> {
    let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
        return Ok(vec![0; endpoints]);
    };
    let values: Vec<u64> = split_list(list)
        .map(|v| {
            v.parse::<u64>().map_err(|_| ConfigError::Invalid {
                setting,
                message: format!("{v:?} is not a non-negative integer"),
            })
        })
        .collect::<Result<_, _>>()?;
    match values.len() {
        1 => Ok(vec![values[0]; endpoints]),
        n if n == endpoints => Ok(values),
        n => Err(ConfigError::Invalid {
            setting,
            message: format!("{n} values for {endpoints} endpoints: give one, or one per endpoint"),
        }),
    }
}

/// Split a comma-separated list, trimming blanks and dropping empty items.
fn split_list(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Check that a base URL is http(s) and drop its trailing slash, so that
/// appending `/v1/messages` or `/chat/completions` gives one slash.
fn normalize_url(raw: &str) -> Result<String, ConfigError> {
    let parsed = reqwest::Url::parse(raw).map_err(|e| ConfigError::Invalid {
        setting: "SKIPJACK_LLM_BASE_URL",
        message: format!("{}: {e}", redact_url(raw)),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid {
            setting: "SKIPJACK_LLM_BASE_URL",
            message: format!("{}: scheme must be http or https", redact_url(raw)),
        });
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// A URL fit for logs and stats: user-info (`user:pass@`) and query removed,
/// because some gateways carry credentials there.
pub fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) => {
            // Both setters only fail for URLs that cannot have credentials,
            // in which case there is nothing to remove.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(urls: &str, keys: &str) -> LlmConfig {
        LlmConfig {
            provider: ProviderKind::Openai,
            base_url: Some(urls.to_owned()),
            openai_api_key: Some(Secret::new(keys)),
            max_tokens: 100,
            ..LlmConfig::default()
        }
    }

    #[test]
    fn budget_limits_follow_the_endpoints() {
        // One URL, two keys: two endpoints (two accounts).
        let mut cfg = openai("http://up.example", "k1,k2");
        assert!(!cfg.has_budget());
        cfg.rpm = Some("600".into());
        let limits = cfg.budget_limits().unwrap();
        assert_eq!(limits.iter().map(|l| l.rpm).collect::<Vec<_>>(), [600, 600]);
        assert!(cfg.has_budget());
        cfg.rpm = Some("600, 0".into());
        cfg.tpm = Some("0,50000".into());
        let limits = cfg.budget_limits().unwrap();
        assert_eq!(
            limits.iter().map(|l| (l.rpm, l.tpm)).collect::<Vec<_>>(),
            [(600, 0), (0, 50_000)]
        );
        assert_eq!(limits[1].token_burst(), 2_500);
        // Neither one value nor one per endpoint.
        cfg.rpm = Some("1,2,3".into());
        assert!(cfg.validate().is_err());
        cfg.rpm = Some("1".into());
        assert!(
            cfg.validate().is_err(),
            "1 request a minute leaves no burst"
        );
        cfg.rpm = Some("many".into());
        assert!(cfg.validate().is_err());
        // A burst that cannot hold one request of max_tokens.
        cfg.rpm = None;
        cfg.tpm = Some("1000".into());
        assert!(cfg.validate().is_err());
        cfg.budget_burst = 0.5;
        cfg.validate().unwrap();
        cfg.budget_burst = 0.0;
        assert!(cfg.validate().is_err());
        // The simulated provider has no endpoints to budget.
        let simulated = LlmConfig {
            rpm: Some("600".into()),
            ..LlmConfig::default()
        };
        assert!(simulated.validate().is_err());
    }
}
