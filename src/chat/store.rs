//! Conversations and messages in Postgres.

use crate::ids::{ConversationId, JobId, TenantId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

mod sql {
    pub const DEFAULT_CONVERSATION: &str =
        include_str!("../../sql/chat/default_conversation.sql");
    pub const CREATE_CONVERSATION: &str = include_str!("../../sql/chat/create_conversation.sql");
    pub const CONVERSATION_USER: &str = include_str!("../../sql/chat/conversation_user.sql");
    pub const HISTORY: &str = include_str!("../../sql/chat/history.sql");
    pub const LIST_MESSAGES: &str = include_str!("../../sql/chat/list_messages.sql");
    pub const APPEND_TURNS: &str = include_str!("../../sql/chat/append_turns.sql");
}

/// One message of a conversation, as the LLM sees it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryMessage {
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
}

/// One message of a conversation, as API readers see it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredMessage {
    pub seq: i32,
    pub role: String,
    pub content: String,
    /// The job whose completion appended it.
    pub job_id: Option<JobId>,
    pub tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// A completed turn to append: the user's message and the reply.
#[derive(Clone, Debug)]
pub struct Turn<'a> {
    pub conversation: ConversationId,
    pub job: JobId,
    pub user_message: &'a str,
    pub assistant_message: &'a str,
    pub user_tokens: Option<i32>,
    pub assistant_tokens: Option<i32>,
}

/// The user's default conversation, created on first use (race-free).
pub async fn default_conversation(
    conn: &mut PgConnection,
    tenant: TenantId,
    user_id: &str,
) -> sqlx::Result<ConversationId> {
    // Losing the creation race yields no row once; the next statement's
    // snapshot sees the winner.
    for _ in 0..3 {
        let found: Option<ConversationId> = sqlx::query_scalar(sql::DEFAULT_CONVERSATION)
            .bind(ConversationId::new())
            .bind(tenant)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = found {
            return Ok(id);
        }
    }
    Err(sqlx::Error::RowNotFound)
}

/// A new conversation of `user_id`.
pub async fn create_conversation<'e>(
    executor: impl PgExecutor<'e>,
    tenant: TenantId,
    user_id: &str,
) -> sqlx::Result<(ConversationId, String, DateTime<Utc>)> {
    sqlx::query_as(sql::CREATE_CONVERSATION)
        .bind(ConversationId::new())
        .bind(tenant)
        .bind(user_id)
        .fetch_one(executor)
        .await
}

/// The user a conversation belongs to, if it is `tenant`'s.
pub async fn conversation_user<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
    tenant: TenantId,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(sql::CONVERSATION_USER)
        .bind(conversation)
        .bind(tenant)
        .fetch_optional(executor)
        .await
}

/// The conversation's messages in order, for the LLM.
pub async fn history<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
) -> sqlx::Result<Vec<HistoryMessage>> {
    sqlx::query_as(sql::HISTORY)
        .bind(conversation)
        .fetch_all(executor)
        .await
}

/// The conversation's messages in order, for API readers. Check ownership
/// with [`conversation_user`] first.
pub async fn list_messages<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
) -> sqlx::Result<Vec<StoredMessage>> {
    sqlx::query_as(sql::LIST_MESSAGES)
        .bind(conversation)
        .fetch_all(executor)
        .await
}

/// Appends completed turns, in the transaction that completes their jobs.
pub async fn append_turns(conn: &mut PgConnection, turns: &[Turn<'_>]) -> sqlx::Result<()> {
    if turns.is_empty() {
        return Ok(());
    }
    let conversations: Vec<ConversationId> = turns.iter().map(|t| t.conversation).collect();
    let jobs: Vec<JobId> = turns.iter().map(|t| t.job).collect();
    let users: Vec<&str> = turns.iter().map(|t| t.user_message).collect();
    let assistants: Vec<&str> = turns.iter().map(|t| t.assistant_message).collect();
    let user_tokens: Vec<Option<i32>> = turns.iter().map(|t| t.user_tokens).collect();
    let assistant_tokens: Vec<Option<i32>> = turns.iter().map(|t| t.assistant_tokens).collect();
    sqlx::query(sql::APPEND_TURNS)
        .bind(&conversations)
        .bind(&jobs)
        .bind(&users)
        .bind(&assistants)
        .bind(&user_tokens)
        .bind(&assistant_tokens)
        .execute(conn)
        .await?;
    Ok(())
}
