//! Chat: conversations, their messages, and the chat job's payload.
//!
//! - [`store`]: conversations and messages in Postgres (all SQL in `sql/chat/`).
//! - [`resolver`]: which conversation a message goes to
//!   ([`resolver::Resolver`], caching what never changes).
//! - [`turn`]: [`turn::ChatHandler`], the worker's handler for chat jobs.
//! - [`cache`]: the optional Redis cache-aside for histories, and its
//!   settings (`REDIS_URL`, `SKIPJACK_CACHE_*`).
//! - [`loader`]: reads the histories of jobs that start together in one query.
//! - [`history_budget`]: how much of a long conversation the LLM is sent
//!   (`SKIPJACK_HISTORY_MAX_TOKENS`).
//! - [`setup`]: the chat handler built from the worker process's settings.
//!
//! A chat job (kind [`CHAT_KIND`]) carries the user's message in its payload;
//! the worker's chat handler loads the conversation's history, calls the LLM,
//! and on completion appends the user turn and the assistant turn together,
//! in the transaction that completes the job.

pub mod cache;
pub mod history_budget;
pub mod loader;
pub mod resolver;
pub mod setup;
pub mod store;
pub mod turn;

pub use cache::CacheArgs;
pub use history_budget::HistoryArgs;
use serde::{Deserialize, Serialize};

/// The job kind of chat turns.
pub const CHAT_KIND: &str = "chat";

/// What a chat job carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatPayload {
    /// The application's user id (opaque to skipjack).
    pub user_id: String,
    /// The user's message for this turn.
    pub message: String,
    /// Free-form data from the client, kept with the job for auditing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Publish the reply's pieces as they arrive (see [`crate::stream`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// What a completed chat job's result holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResult {
    /// The assistant's reply.
    pub response: String,
    /// The model that answered (empty in results written before it was
    /// recorded).
    #[serde(default)]
    pub model: String,
}

impl ChatResult {
    /// The chat result stored in a job's `result`; `None` when it is not
    /// one (another kind's result).
    pub fn read(result: &serde_json::Value) -> Option<ChatResult> {
        ChatResult::deserialize(result).ok()
    }
}
