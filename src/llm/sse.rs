//! Streaming calls: a JSON POST whose 2xx answer is a Server-Sent Events
//! stream, as both the Anthropic Messages API and OpenAI-compatible chat
//! completions send with `"stream": true`.
//!
//! The SSE framing is parsed by the `eventsource-stream` crate; each
//! provider reads its own event shapes. Failures are classified exactly as
//! for non-streaming calls ([`super::http`]): an error status before the
//! stream starts, a broken connection or timeout while it runs. A stream
//! that ends before the provider said it was complete is a broken
//! connection (retryable): the text so far is not a whole reply.

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use serde::Serialize;

use super::http::{classify_status, classify_transport};
use super::{ErrorClass, LlmError};

/// What a provider's event reader says after one event.
pub enum Flow {
    /// Keep reading.
    More,
    /// The reply is complete.
    Done,
}

/// POSTs `body` to `url` and feeds every event of the answer's stream to
/// `on_event(event name, data)` until it says [`Flow::Done`].
pub async fn post_sse(
    client: &reqwest::Client,
    provider: &'static str,
    url: &str,
    headers: &HeaderMap,
    body: &impl Serialize,
    mut on_event: impl FnMut(&str, &str) -> Result<Flow, LlmError>,
) -> Result<(), LlmError> {
    let response = client
        .post(url)
        .headers(headers.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "text/event-stream")
        .json(body)
        .send()
        .await
        .map_err(|e| classify_transport(provider, &e))?;
    let status = response.status();
    if !status.is_success() {
        let response_headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify_transport(provider, &e))?;
        return Err(classify_status(
            provider,
            status,
            &response_headers,
            &bytes,
            chrono::Utc::now(),
        ));
    }
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(e) => classify_transport(provider, &e),
            EventStreamError::Utf8(e) => LlmError::permanent(
                ErrorClass::Malformed,
                format!("{provider}: event stream is not UTF-8: {e}"),
            ),
            EventStreamError::Parser(e) => LlmError::permanent(
                ErrorClass::Malformed,
                format!("{provider}: cannot parse the event stream: {e}"),
            ),
        })?;
        if let Flow::Done = on_event(&event.event, &event.data)? {
            return Ok(());
        }
    }
    Err(LlmError::retryable(
        ErrorClass::Connect,
        format!("{provider}: the event stream ended before the reply was complete"),
    ))
}

/// Parses one event's JSON data, or says the stream is malformed.
pub fn parse<T: serde::de::DeserializeOwned>(
    provider: &'static str,
    data: &str,
) -> Result<T, LlmError> {
    serde_json::from_str(data).map_err(|e| {
        LlmError::permanent(
            ErrorClass::Malformed,
            format!("{provider}: cannot parse a stream event: {e}"),
        )
    })
}

/// An error the upstream reported inside the stream (Anthropic's `error`
/// event, an OpenAI-compatible `{"error": …}` chunk): overload, server and
/// rate-limit errors are retryable like their HTTP statuses, the rest
/// permanent.
pub fn upstream_error(provider: &'static str, data: &str) -> LlmError {
    let message = format!(
        "{provider}: error in the event stream: {}",
        super::http::upstream_message(data.as_bytes())
    );
    let kind = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| {
            v["error"]["type"]
                .as_str()
                .or_else(|| v["error"]["code"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    match kind.as_str() {
        "rate_limit_error" | "rate_limit_exceeded" => {
            LlmError::retryable(ErrorClass::RateLimited, message)
        }
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large" => LlmError::permanent(ErrorClass::Client, message),
        // overloaded_error, api_error, server_error, or unknown: the
        // upstream's fault, worth another attempt.
        _ => LlmError::retryable(ErrorClass::Server, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_are_classified_like_their_statuses() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = upstream_error("anthropic", overloaded);
        assert!(e.is_retryable());
        assert_eq!(e.class(), ErrorClass::Server);
        assert!(e.message().contains("Overloaded"), "{e}");
        let bad = r#"{"error":{"type":"invalid_request_error","message":"too long"}}"#;
        assert_eq!(upstream_error("openai", bad).class(), ErrorClass::Client);
        assert!(!upstream_error("openai", bad).is_retryable());
        let limited = r#"{"error":{"code":"rate_limit_exceeded","message":"slow down"}}"#;
        assert_eq!(
            upstream_error("openai", limited).class(),
            ErrorClass::RateLimited
        );
    }
}
