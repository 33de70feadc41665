//! The HTTP plumbing shared by the Anthropic and OpenAI-compatible providers:
//! the one process-wide `reqwest::Client`, the JSON POST, and the mapping of
//! every way a call can fail onto an [`LlmError`] class.
//!
//! Keeping the classification in one place is what makes the retry policy
//! uniform across providers: 429 and 5xx are retryable and keep the
//! upstream's `Retry-After`, timeouts and broken connections are retryable,
//! other 4xx are permanent, and a success we cannot parse is permanent
//! (sending the same request again would get the same answer).

use std::error::Error as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::settings::MAX_CONNECT_TIMEOUT;
use super::ConfigError;
use super::{ErrorClass, LlmError};

/// How long an idle pooled connection is kept: long enough to survive gaps
/// between jobs, short enough to drop connections a load balancer already
/// closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes so a silently dead upstream is noticed on idle
/// connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Longest upstream error text kept in an error message: enough to read the
/// reason, short enough for a log line and `job_history.error`.
const MAX_MESSAGE_CHARS: usize = 500;
/// Non-standard header (OpenAI, Azure) giving the retry delay in milliseconds;
/// preferred over `Retry-After` when present because it is more precise.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Build the one HTTP client of the process. Every endpoint of every provider
/// shares it, so connections are pooled and kept alive across jobs.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .tcp_nodelay(true)
        .user_agent(concat!("skipjack/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::HttpClient(e.to_string()))
}

/// A header value holding a credential: validated at start-up and marked
/// sensitive so that HTTP-layer debug output does not print it.
pub fn secret_header(value: &str, setting: &'static str) -> Result<HeaderValue, ConfigError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| ConfigError::Invalid {
        setting,
        // Never echo the value: it is a key.
        message: "contains characters not allowed in an HTTP header".into(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// POST `body` as JSON to `url` and decode a 2xx answer as `T`.
///
/// `provider` only prefixes error messages. Non-2xx answers, transport
/// failures and undecodable bodies come back as classified [`LlmError`]s.
pub async fn post_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    provider: &'static str,
    url: &str,
    headers: &HeaderMap,
    body: &impl Serialize,
) -> Result<T, LlmError> {
    let response = client
        .post(url)
        .headers(headers.clone())
        .header(CONTENT_TYPE, "application/json")
        .json(body)
        .send()
        .await
        .map_err(|e| classify_transport(provider, &e))?;
    let status = response.status();
    let response_headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| classify_transport(provider, &e))?;
    if !status.is_success() {
        return Err(classify_status(
            provider,
            status,
            &response_headers,
            &bytes,
            Utc::now(),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        LlmError::permanent(
            ErrorClass::Malformed,
            format!("{provider}: cannot parse HTTP {status} response: {e}"),
        )
    })
}

/// Classify a failure that produced no HTTP status: timeouts, refused or
/// broken connections. The URL is left out (it may carry credentials).
pub fn classify_transport(provider: &'static str, err: &reqwest::Error) -> LlmError {
    let detail = error_chain(err);
    if err.is_builder() {
        LlmError::permanent(
            ErrorClass::Client,
            format!("{provider}: invalid request: {detail}"),
        )
    } else if err.is_timeout() {
        LlmError::retryable(
            ErrorClass::Timeout,
            format!("{provider}: request timed out: {detail}"),
        )
    } else if err.is_connect() {
        LlmError::retryable(
            ErrorClass::Connect,
            format!("{provider}: cannot connect: {detail}"),
        )
    } else {
        // The connection broke while sending or reading: the upstream may be
        // restarting; another attempt (possibly on another endpoint) can work.
        LlmError::retryable(
            ErrorClass::Connect,
            format!("{provider}: connection failed: {detail}"),
        )
    }
}

/// Classify a non-2xx answer, keeping the upstream's own error message.
///
/// - 429: retryable `RateLimited`, with `Retry-After`;
/// - 408: retryable `Timeout` (the server gave up waiting for us, which says
///   nothing about the request itself; a deliberate exception to "4xx is
///   permanent");
/// - 5xx (including Anthropic's 529 overloaded): retryable `Server`, with
///   `Retry-After` when given;
/// - other 4xx: permanent `Client`;
/// - anything else (1xx, 3xx we did not follow): permanent `Malformed`.
pub fn classify_status(
    provider: &'static str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> LlmError {
    let message = format!("{provider}: HTTP {status}: {}", upstream_message(body));
    let retry_after = retry_after(headers, now);
    match status.as_u16() {
        429 => LlmError::Retryable {
            class: ErrorClass::RateLimited,
            message,
            retry_after,
        },
        408 => LlmError::Retryable {
            class: ErrorClass::Timeout,
            message,
            retry_after,
        },
        500..=599 => LlmError::Retryable {
            class: ErrorClass::Server,
            message,
            retry_after,
        },
        400..=499 => LlmError::permanent(ErrorClass::Client, message),
        _ => LlmError::permanent(ErrorClass::Malformed, message),
    }
}

/// The delay asked for by `retry-after-ms` or `Retry-After` (delta seconds or
/// an HTTP date relative to `now`); a date in the past means "now".
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let millis = headers
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
    millis.or_else(|| {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
    })
}

/// Parse one `Retry-After` value: delta seconds (fractions tolerated) or an
/// IMF-fixdate such as `Wed, 21 Oct 2015 07:28:00 GMT`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The human part of an upstream error body.
///
/// Understands `{"error":{"type","message"}}` (Anthropic, OpenAI),
/// `{"error":"..."}` (Ollama), `{"message":"..."}` (vLLM) and
/// `{"detail":"..."}` (FastAPI-based servers); otherwise the body text,
/// truncated.
pub fn upstream_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &value["error"];
        let text = match (error["type"].as_str(), error["message"].as_str()) {
            (Some(kind), Some(msg)) => Some(format!("{kind}: {msg}")),
            (None, Some(msg)) => Some(msg.to_owned()),
            _ => error
                .as_str()
                .or_else(|| value["message"].as_str())
                .or_else(|| value["detail"].as_str())
                .map(str::to_owned),
        };
        if let Some(text) = text {
            return truncate(&text);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        truncate(text)
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `reqwest::Error` and its causes, without the URL: reqwest's own message
/// ("error sending request") says little; the cause ("Connection refused")
/// says what happened.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
