//! The Anthropic Messages API (`POST {base}/v1/messages`) as a [`Provider`].
//!
//! One instance talks to one endpoint (one base URL with one key); the
//! [`pool`](super::pool) spreads requests over several instances. Anthropic
//! has no `system` role inside `messages`: the system prompt travels in the
//! top-level `system` field, so any `System` message of the request is moved
//! there (after the request's own system prompt).

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::http::{post_json, secret_header};
use super::settings::{ModelSettings, Secret};
use super::sse::{self, Flow};
use super::ConfigError;
use super::{
    estimate_usage, ChatRequest, ChatResponse, ErrorClass, LlmError, OnDelta, Provider, Role, Usage,
};

/// API version header value this code speaks; Anthropic requires one and
/// keeps old versions working, so it is pinned rather than configurable.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
const NAME: &str = "anthropic";

/// An Anthropic endpoint: where, with which key, and which model.
pub struct AnthropicProvider {
    /// The shared process-wide client (pooled connections).
    client: reqwest::Client,
    /// `{base}/v1/messages`, computed once.
    url: String,
    /// `x-api-key` (marked sensitive) and `anthropic-version`, built once.
    headers: HeaderMap,
    /// Model, max_tokens, default system prompt.
    settings: ModelSettings,
}

impl AnthropicProvider {
    /// An endpoint at `base_url` (e.g. `https://api.anthropic.com`, no `/v1`).
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: &Secret,
        settings: ModelSettings,
    ) -> Result<Self, ConfigError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-api-key"),
            secret_header(api_key.expose(), "ANTHROPIC_API_KEY")?,
        );
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        Ok(Self {
            client,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            headers,
            settings,
        })
    }

    /// The Messages API body for `req`.
    fn body<'a>(&'a self, req: &'a ChatRequest) -> MessagesRequest<'a> {
        let system_parts: Vec<&str> = req
            .effective_system(self.settings.default_system.as_deref())
            .into_iter()
            .chain(
                req.messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str()),
            )
            .collect();
        MessagesRequest {
            model: &self.settings.model,
            max_tokens: self.settings.max_tokens,
            stream: false,
            system: (!system_parts.is_empty()).then(|| system_parts.join("\n\n")),
            messages: req
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| WireMessage {
                    role: m.role,
                    content: &m.content,
                })
                .collect(),
        }
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req);
            let response: MessagesResponse =
                post_json(&self.client, NAME, &self.url, &self.headers, &body).await?;
            let mut text_blocks = response
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .peekable();
            if text_blocks.peek().is_none() {
                return Err(LlmError::permanent(
                    ErrorClass::Malformed,
                    format!("{NAME}: response has no text content block"),
                ));
            }
            let content: String = text_blocks.collect();
            let usage = match response.usage {
                Some(u) => Usage {
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                },
                None => estimate_usage(body.system.as_deref(), &req.messages, &content),
            };
            Ok(ChatResponse {
                content,
                usage,
                model: response
                    .model
                    .unwrap_or_else(|| self.settings.model.clone()),
            })
        })
    }

    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        on_delta: OnDelta<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.stream(req, on_delta))
    }
}

impl AnthropicProvider {
    /// A streamed message: `message_start` (model, input tokens),
    /// `content_block_delta` text pieces, `message_delta` (output tokens),
    /// `message_stop`; `error` events fail the call, `ping`s are ignored.
    async fn stream(
        &self,
        req: &ChatRequest,
        on_delta: OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = self.body(req);
        body.stream = true;
        let mut content = String::new();
        let mut model = None;
        let mut input_tokens = None;
        let mut output_tokens = None;
        sse::post_sse(
            &self.client,
            NAME,
            &self.url,
            &self.headers,
            &body,
            |event, data| {
                match event {
                    "message_start" => {
                        let start: MessageStart = sse::parse(NAME, data)?;
                        model = start.message.model;
                        if let Some(usage) = start.message.usage {
                            input_tokens = usage.input_tokens;
                            output_tokens = usage.output_tokens;
                        }
                    }
                    "content_block_delta" => {
                        let delta: BlockDelta = sse::parse(NAME, data)?;
                        if let Some(text) = delta.delta.text.filter(|t| !t.is_empty()) {
                            on_delta(&text);
                            content.push_str(&text);
                        }
                    }
                    "message_delta" => {
                        let delta: MessageDelta = sse::parse(NAME, data)?;
                        if let Some(usage) = delta.usage {
                            input_tokens = usage.input_tokens.or(input_tokens);
                            output_tokens = usage.output_tokens.or(output_tokens);
                        }
                    }
                    "message_stop" => return Ok(Flow::Done),
                    "error" => return Err(sse::upstream_error(NAME, data)),
                    // ping, content_block_start/stop, and event types added
                    // later.
                    _ => {}
                }
                Ok(Flow::More)
            },
        )
        .await?;
        if content.is_empty() {
            return Err(LlmError::permanent(
                ErrorClass::Malformed,
                format!("{NAME}: the stream carried no text"),
            ));
        }
        let usage = match (input_tokens, output_tokens) {
            (Some(input_tokens), Some(output_tokens)) => Usage {
                input_tokens,
                output_tokens,
            },
            _ => estimate_usage(body.system.as_deref(), &req.messages, &content),
        };
        Ok(ChatResponse {
            content,
            usage,
            model: model.unwrap_or_else(|| self.settings.model.clone()),
        })
    }
}

/// `message_start`: the message's model and its usage so far.
#[derive(Deserialize)]
struct MessageStart {
    message: StartedMessage,
}

#[derive(Deserialize)]
struct StartedMessage {
    model: Option<String>,
    usage: Option<StreamUsage>,
}

/// `content_block_delta`: a text piece (`text_delta`), or another kind of
/// delta (tool input) without `text`.
#[derive(Deserialize)]
struct BlockDelta {
    delta: DeltaBody,
}

#[derive(Deserialize)]
struct DeltaBody {
    text: Option<String>,
}

/// `message_delta`: the final usage.
#[derive(Deserialize)]
struct MessageDelta {
    usage: Option<StreamUsage>,
}

/// Usage as streamed: either count may be missing from an event.
#[derive(Deserialize)]
struct StreamUsage {
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
}

/// Request body of `POST /v1/messages`.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    /// Sent only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

/// The parts of a Messages API answer we use.
#[derive(Deserialize)]
struct MessagesResponse {
    content: Vec<ContentBlock>,
    usage: Option<AnthropicUsage>,
    model: Option<String>,
}

/// One content block; only `text` blocks carry the answer.
#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: u32,
    output_tokens: u32,
}
