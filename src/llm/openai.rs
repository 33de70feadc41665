//! OpenAI-compatible chat completions (`POST {base}/chat/completions`) as a
//! [`Provider`]: OpenAI itself, and the servers that copy its API (vLLM,
//! Ollama, llama.cpp server, OpenRouter, ...).
//!
//! The key is optional because local servers need none. The system prompt is
//! sent as a leading `system` message. Some compatible servers omit `usage`;
//! tokens are then estimated so that cost accounting never reads zero.
//!
//! `max_tokens` (not OpenAI's newer `max_completion_tokens`) is sent because
//! every compatible server understands it.

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};

use super::http::{post_json, secret_header};
use super::settings::{ModelSettings, Secret};
use super::sse::{self, Flow};
use super::ConfigError;
use super::{
    estimate_usage, ChatRequest, ChatResponse, ErrorClass, LlmError, OnDelta, Provider, Role, Usage,
};

const NAME: &str = "openai";

/// An OpenAI-compatible endpoint: where, with which key (if any), which model.
pub struct OpenAiProvider {
    /// The shared process-wide client (pooled connections).
    client: reqwest::Client,
    /// `{base}/chat/completions`, computed once.
    url: String,
    /// `Authorization: Bearer …` (marked sensitive) when a key is set.
    headers: HeaderMap,
    /// Model, max_tokens, default system prompt.
    settings: ModelSettings,
}

impl OpenAiProvider {
    /// An endpoint at `base_url`, which includes the API version path
    /// (e.g. `https://api.openai.com/v1`, `http://localhost:11434/v1`).
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<&Secret>,
        settings: ModelSettings,
    ) -> Result<Self, ConfigError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let value: HeaderValue =
                secret_header(&format!("Bearer {}", key.expose()), "OPENAI_API_KEY")?;
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            headers,
            settings,
        })
    }

    /// The chat completions body for `req`.
    fn body<'a>(&'a self, req: &'a ChatRequest) -> CompletionRequest<'a> {
        let system = req
            .effective_system(self.settings.default_system.as_deref())
            .map(|content| WireMessage {
                role: Role::System,
                content,
            });
        CompletionRequest {
            model: &self.settings.model,
            max_tokens: self.settings.max_tokens,
            stream: None,
            messages: system
                .into_iter()
                .chain(req.messages.iter().map(|m| WireMessage {
                    role: m.role,
                    content: &m.content,
                }))
                .collect(),
        }
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req);
            let response: CompletionResponse =
                post_json(&self.client, NAME, &self.url, &self.headers, &body).await?;
            let Some(content) = response
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
            else {
                return Err(LlmError::permanent(
                    ErrorClass::Malformed,
                    format!("{NAME}: response has no choices[0].message.content"),
                ));
            };
            let usage = self.usage(req, response.usage, &content);
            Ok(ChatResponse {
                content,
                usage,
                model: response
                    .model
                    .filter(|m| !m.is_empty())
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

impl OpenAiProvider {
    /// The usage the server reported, or an estimate when it sent none.
    fn usage(&self, req: &ChatRequest, reported: Option<OpenAiUsage>, content: &str) -> Usage {
        match reported {
            Some(u) => Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
            },
            None => estimate_usage(
                req.effective_system(self.settings.default_system.as_deref()),
                &req.messages,
                content,
            ),
        }
    }

    /// A streamed completion: `choices[0].delta.content` pieces until
    /// `data: [DONE]`, the usage in the last chunk when the server sends it.
    async fn stream(
        &self,
        req: &ChatRequest,
        on_delta: OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = self.body(req);
        body.stream = Some(StreamOptions {
            stream: true,
            stream_options: IncludeUsage {
                include_usage: true,
            },
        });
        let mut content = String::new();
        let mut usage = None;
        let mut model = None;
        sse::post_sse(
            &self.client,
            NAME,
            &self.url,
            &self.headers,
            &body,
            |_, data| {
                if data.trim() == "[DONE]" {
                    return Ok(Flow::Done);
                }
                let chunk: CompletionChunk = sse::parse(NAME, data)?;
                if chunk.error.is_some() {
                    return Err(sse::upstream_error(NAME, data));
                }
                if let Some(piece) = chunk
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|c| c.delta.content)
                    .filter(|p| !p.is_empty())
                {
                    on_delta(&piece);
                    content.push_str(&piece);
                }
                usage = chunk.usage.or(usage.take());
                model = chunk.model.filter(|m| !m.is_empty()).or(model.take());
                Ok(Flow::More)
            },
        )
        .await?;
        if content.is_empty() {
            return Err(LlmError::permanent(
                ErrorClass::Malformed,
                format!("{NAME}: the stream carried no content"),
            ));
        }
        let usage = self.usage(req, usage, &content);
        Ok(ChatResponse {
            content,
            usage,
            model: model.unwrap_or_else(|| self.settings.model.clone()),
        })
    }
}

/// Request body of `POST /chat/completions`.
#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    /// Set only for streaming calls.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    stream: Option<StreamOptions>,
    messages: Vec<WireMessage<'a>>,
}

/// `"stream": true` and the final usage chunk (`include_usage`), which
/// OpenAI, vLLM and recent Ollama send; servers that do not get their
/// tokens estimated.
#[derive(Serialize)]
struct StreamOptions {
    stream: bool,
    stream_options: IncludeUsage,
}

#[derive(Serialize)]
struct IncludeUsage {
    include_usage: bool,
}

/// One chunk of a streamed completion.
#[derive(Deserialize)]
struct CompletionChunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<OpenAiUsage>,
    model: Option<String>,
    /// Some servers report a failure mid-stream as an error chunk.
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
}

#[derive(Default, Deserialize)]
struct ChunkDelta {
    content: Option<String>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

/// The parts of a chat completion we use.
#[derive(Deserialize)]
struct CompletionResponse {
    choices: Vec<Choice>,
    usage: Option<OpenAiUsage>,
    model: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    /// Null when the model answered with a tool call or refused.
    content: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
}
