//! Conversations and messages in Postgres.

use crate::db::Schema;
use crate::ids::{ConversationId, JobId, TenantId};
use crate::llm::Role;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};

mod sql {
    crate::sql::sql_files!("chat" {
        DEFAULT_CONVERSATION => "default_conversation.sql",
        CREATE_CONVERSATION => "create_conversation.sql",
        CONVERSATION_USER => "conversation_user.sql",
        HISTORIES => "histories.sql",
        LIST_MESSAGES => "list_messages.sql",
        APPEND_TURNS => "append_turns.sql",
        APPEND_TURNS_WITH_MODEL => "append_turns_with_model.sql",
        LIST_MESSAGES_WITH_MODEL => "list_messages_with_model.sql",
        HISTORY_VERSION => "history_version.sql",
    });
}

/// The migration that added `messages.model`: processes running at an
/// older schema neither write nor read it.
pub const MODEL_VERSION: i32 = 6;

/// One message of a conversation, as the LLM sees it (and as the history
/// cache stores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct HistoryMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// One message of a conversation, as API readers see it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredMessage {
    /// Position in the conversation, from 1.
    pub seq: i32,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The job whose completion appended it.
    pub job_id: Option<JobId>,
    /// Tokens the provider reported for it.
    pub tokens: Option<i32>,
    /// The model that wrote an assistant message; `None` for user
    /// messages, for replies written before [`MODEL_VERSION`], and when read
    /// at an older schema.
    #[sqlx(default)]
    pub model: Option<String>,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// Which state of a conversation's history a reader saw: the seq and
/// creation time of its last message. Messages are append-only and a turn's
/// rows get their transaction's timestamp, so two different histories never
/// share a version, and a turn written by a transaction that rolled back
/// never becomes a version Postgres reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryVersion {
    /// Seq of the last message; 0 for an empty conversation.
    pub seq: i32,
    /// Its `created_at`; `None` for an empty conversation.
    pub at: Option<DateTime<Utc>>,
}

/// What [`append_turns`] did to one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The conversation appended to.
    pub conversation: ConversationId,
    /// The history version the turn was appended to.
    pub before: HistoryVersion,
    /// The history version after the turn.
    pub after: HistoryVersion,
}

/// A completed turn to append: the user's message and the reply.
#[derive(Clone, Debug)]
pub struct Turn<'a> {
    /// The conversation the turn belongs to.
    pub conversation: ConversationId,
    /// The chat job that completed with it.
    pub job: JobId,
    /// The user's message.
    pub user_message: &'a str,
    /// The model's reply.
    pub assistant_message: &'a str,
    /// Input tokens of the call.
    pub user_tokens: Option<i32>,
    /// Output tokens of the call.
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

/// What the LLM is sent of a conversation's history under the budget (see
/// [`super::history_budget`]), and the version of the history it was taken from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryWindow {
    /// Oldest first, cut to the token budget.
    pub messages: Vec<HistoryMessage>,
    /// The version of the whole history (its newest message, whether sent
    /// or not).
    pub version: HistoryVersion,
}

/// The history windows of several conversations under a budget of
/// `max_tokens`, each in order, in one query that reads only the messages
/// it keeps. Conversations without messages are absent from the map.
pub async fn histories<'e>(
    executor: impl PgExecutor<'e>,
    conversations: &[ConversationId],
    max_tokens: u32,
) -> sqlx::Result<std::collections::HashMap<ConversationId, HistoryWindow>> {
    type Row = (
        ConversationId,
        i32,
        DateTime<Utc>,
        Option<Role>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(sql::HISTORIES)
        .bind(conversations)
        .bind(i64::from(max_tokens))
        .fetch_all(executor)
        .await?;
    let mut out: std::collections::HashMap<ConversationId, HistoryWindow> =
        std::collections::HashMap::new();
    for (conversation, seq, at, role, content) in rows {
        let window = out.entry(conversation).or_insert_with(|| HistoryWindow {
            messages: Vec::new(),
            version: HistoryVersion { seq, at: Some(at) },
        });
        if let (Some(role), Some(content)) = (role, content) {
            window.messages.push(HistoryMessage { role, content });
        }
    }
    Ok(out)
}

/// One conversation's history window under a budget of `max_tokens` (see
/// [`histories`]); empty, with the default version, without messages.
pub async fn history_with_version<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
    max_tokens: u32,
) -> sqlx::Result<(Vec<HistoryMessage>, HistoryVersion)> {
    let window = histories(executor, &[conversation], max_tokens)
        .await?
        .remove(&conversation)
        .unwrap_or_default();
    Ok((window.messages, window.version))
}

/// The current version of the conversation's history, without reading it.
pub async fn history_version<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
) -> sqlx::Result<HistoryVersion> {
    let last: Option<(i32, DateTime<Utc>)> = sqlx::query_as(sql::HISTORY_VERSION)
        .bind(conversation)
        .fetch_optional(executor)
        .await?;
    Ok(last
        .map(|(seq, at)| HistoryVersion { seq, at: Some(at) })
        .unwrap_or_default())
}

/// The conversation's messages in order, for API readers. Check ownership
/// with [`conversation_user`] first.
pub async fn list_messages<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
) -> sqlx::Result<Vec<StoredMessage>> {
    list_messages_at(executor, conversation, Schema::current()).await
}

/// [`list_messages`] by a process running at `schema`: the model of each
/// message only from [`MODEL_VERSION`] on.
pub async fn list_messages_at<'e>(
    executor: impl PgExecutor<'e>,
    conversation: ConversationId,
    schema: Schema,
) -> sqlx::Result<Vec<StoredMessage>> {
    let statement = if schema.has(MODEL_VERSION) {
        sql::LIST_MESSAGES_WITH_MODEL
    } else {
        sql::LIST_MESSAGES
    };
    sqlx::query_as(statement)
        .bind(conversation)
        .fetch_all(executor)
        .await
}

/// Appends completed turns, in the transaction that completes their jobs;
/// returns each conversation's history version before and after.
pub async fn append_turns(
    conn: &mut PgConnection,
    turns: &[Turn<'_>],
) -> sqlx::Result<Vec<Appended>> {
    append_turns_with_models(conn, turns, None).await
}

/// [`append_turns`], also recording with each reply the model that wrote
/// it when `models` (one per turn) is given: only at a schema that has
/// [`MODEL_VERSION`].
pub async fn append_turns_with_models(
    conn: &mut PgConnection,
    turns: &[Turn<'_>],
    models: Option<&[&str]>,
) -> sqlx::Result<Vec<Appended>> {
    if turns.is_empty() {
        return Ok(Vec::new());
    }
    let conversations: Vec<ConversationId> = turns.iter().map(|t| t.conversation).collect();
    let jobs: Vec<JobId> = turns.iter().map(|t| t.job).collect();
    let users: Vec<&str> = turns.iter().map(|t| t.user_message).collect();
    let assistants: Vec<&str> = turns.iter().map(|t| t.assistant_message).collect();
    let user_tokens: Vec<Option<i32>> = turns.iter().map(|t| t.user_tokens).collect();
    let assistant_tokens: Vec<Option<i32>> = turns.iter().map(|t| t.assistant_tokens).collect();
    type Row = (
        ConversationId,
        Option<i32>,
        Option<DateTime<Utc>>,
        i32,
        DateTime<Utc>,
    );
    let query = match models {
        Some(_) => sqlx::query_as(sql::APPEND_TURNS_WITH_MODEL),
        None => sqlx::query_as(sql::APPEND_TURNS),
    };
    let query = query
        .bind(&conversations)
        .bind(&jobs)
        .bind(&users)
        .bind(&assistants)
        .bind(&user_tokens)
        .bind(&assistant_tokens);
    let query = match models {
        Some(models) => query.bind(models),
        None => query,
    };
    let rows: Vec<Row> = query.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(conversation, prev_seq, prev_at, seq, at)| Appended {
            conversation,
            before: HistoryVersion {
                seq: prev_seq.unwrap_or(0),
                at: prev_at,
            },
            after: HistoryVersion { seq, at: Some(at) },
        })
        .collect())
}
