//! The console's reads, shared by its pages and by `/v1/admin`: one page
//! of jobs by filters with a keyset cursor, one job with its events, one
//! conversation with its turns, and the numbers of the overview. Every
//! statement is a file under `sql/admin/`.

use crate::ids::{ConversationId, JobId, TenantId};
use crate::queue::{self, JobEvent, JobState, JobView, Priority};
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use serde::Serialize;
use sqlx::PgPool;

macro_rules! statements {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub(crate) const $name: &str = include_str!(concat!("../../sql/admin/", $file));
        )*
    };
}

statements! {
    READ_SNAPSHOT => "read_snapshot.sql",
    CUSTOM_PLANS => "custom_plans.sql",
    JOBS_LIVE => "jobs_live.sql",
    JOBS_HISTORY => "jobs_history.sql",
    THROUGHPUT => "throughput.sql",
    WORKERS => "workers.sql",
    TENANT_NAMES => "tenant_names.sql",
    CONVERSATION => "conversation.sql",
    CONVERSATION_MESSAGES => "conversation_messages.sql",
    CONVERSATION_JOBS => "conversation_jobs.sql",
}

/// Most jobs on one page.
pub const MAX_LIMIT: i64 = 200;
/// Jobs on a page unless asked otherwise.
pub const DEFAULT_LIMIT: i64 = 50;
/// Longest `kind` filter (the column's own limit).
pub const MAX_KIND_LEN: usize = 100;
/// Longest error-text filter.
pub const MAX_ERROR_FILTER_LEN: usize = 200;
/// Most turns and jobs shown for one conversation.
pub const MAX_CONVERSATION_ROWS: i64 = 1000;
/// Longest a list statement may run: filters that match few jobs walk the
/// history, and are stopped here (the caller is told to narrow them).
pub const LIST_TIMEOUT: &str = "5s";
/// Most tenants named on the overview.
const MAX_TENANTS: i64 = 10_000;

/// Which jobs to list. `None` filters are not applied.
#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub tenant: Option<TenantId>,
    pub priority: Option<Priority>,
    pub kind: Option<String>,
    pub conversation: Option<ConversationId>,
    /// Submitted at or after.
    pub since: Option<DateTime<Utc>>,
    /// Submitted before.
    pub until: Option<DateTime<Utc>>,
    /// Text the error contains (case-insensitive).
    pub error: Option<String>,
    /// Only jobs older than this one (the previous page's `next_cursor`).
    pub cursor: Option<JobId>,
    /// 1..=[`MAX_LIMIT`].
    pub limit: i64,
}

/// One page of jobs, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<JobId>,
}

/// `text` as an ILIKE pattern matching it anywhere, its wildcards escaped.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One page of jobs matching `q`, newest first (by id: UUIDv7, so by
/// submission time). Live jobs come from `jobs`, finished ones from
/// `job_history`, read in one snapshot and merged. The cursor is the last
/// id shown: jobs submitted later never shift the pages after it.
pub async fn list_jobs(pool: &PgPool, q: &JobQuery) -> sqlx::Result<JobPage> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let (live, finished) = match q.state {
        None => (true, true),
        Some(s) if s.is_final() => (false, true),
        Some(_) => (true, false),
    };
    let pattern = q.error.as_deref().map(contains_pattern);
    let mut tx = pool.begin().await?;
    sqlx::query(READ_SNAPSHOT).execute(&mut *tx).await?;
    sqlx::query(CUSTOM_PLANS)
        .bind(LIST_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    let mut jobs = Vec::new();
    for (wanted, sql) in [(live, JOBS_LIVE), (finished, JOBS_HISTORY)] {
        if !wanted {
            continue;
        }
        let rows: Vec<JobView> = sqlx::query_as(sql)
            .bind(q.state)
            .bind(q.tenant)
            .bind(q.priority)
            .bind(q.kind.as_deref())
            .bind(q.conversation)
            .bind(q.since)
            .bind(q.until)
            .bind(pattern.as_deref())
            .bind(q.cursor)
            .bind(limit + 1)
            .fetch_all(&mut *tx)
            .await?;
        jobs.extend(rows);
    }
    tx.commit().await?;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(JobPage { jobs, next_cursor })
}

/// One job with its events.
#[derive(Clone, Debug, Serialize)]
pub struct JobDetail {
    pub job: JobView,
    /// Retries, rescues, releases, cancellation, oldest first.
    pub events: Vec<JobEvent>,
}

/// The job `id` of any tenant, with its events; `None` if there is none.
pub async fn job(pool: &PgPool, id: JobId) -> sqlx::Result<Option<JobDetail>> {
    let job = match queue::get(pool, id, None).await {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(None),
        Err(e) => return Err(queue_error(e)),
    };
    let events = queue::events(pool, id).await.map_err(queue_error)?;
    Ok(Some(JobDetail { job, events }))
}

fn queue_error(e: queue::QueueError) -> sqlx::Error {
    match e {
        queue::QueueError::Database(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Turn {
    pub seq: i32,
    pub role: String,
    pub content: String,
    /// The job whose completion appended it.
    pub job_id: Option<JobId>,
    pub tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// A conversation's header row.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ConversationHead {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    pub user_id: String,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
}

/// A conversation: its turns in order and its jobs in submission order.
#[derive(Clone, Debug, Serialize)]
pub struct Conversation {
    pub conversation: ConversationHead,
    pub turns: Vec<Turn>,
    pub jobs: Vec<JobView>,
}

/// The conversation `id` of any tenant; `None` if there is none. At most
/// [`MAX_CONVERSATION_ROWS`] turns and jobs.
pub async fn conversation(pool: &PgPool, id: ConversationId) -> sqlx::Result<Option<Conversation>> {
    let Some(head) = sqlx::query_as::<_, ConversationHead>(CONVERSATION)
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let turns = sqlx::query_as(CONVERSATION_MESSAGES)
        .bind(id)
        .bind(MAX_CONVERSATION_ROWS)
        .bind(1_i32)
        .fetch_all(pool)
        .await?;
    let jobs = sqlx::query_as(CONVERSATION_JOBS)
        .bind(id)
        .bind(MAX_CONVERSATION_ROWS)
        .fetch_all(pool)
        .await?;
    Ok(Some(Conversation {
        conversation: head,
        turns,
        jobs,
    }))
}

/// Jobs finished in one minute, by outcome.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// A worker alive: holding leases or waiting for work.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub worker: String,
    /// Jobs it is processing.
    pub in_flight: i64,
    /// The soonest expiry among its leases.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it last registered as waiting for work.
    pub waiting_since: Option<DateTime<Utc>>,
}

/// The last 60 minutes, oldest first, every minute present (zeros where
/// nothing finished).
pub async fn throughput(pool: &PgPool) -> sqlx::Result<Vec<Minute>> {
    let rows: Vec<Minute> = sqlx::query_as(THROUGHPUT).fetch_all(pool).await?;
    let now = Utc::now()
        .duration_trunc(ChronoDuration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    Ok((0..60)
        .rev()
        .map(|ago| {
            let minute = now - ChronoDuration::minutes(ago);
            rows.iter()
                .find(|r| r.minute == minute)
                .cloned()
                .unwrap_or(Minute {
                    minute,
                    completed: 0,
                    failed: 0,
                    cancelled: 0,
                })
        })
        .collect())
}

/// The workers alive now.
pub async fn workers(pool: &PgPool) -> sqlx::Result<Vec<WorkerRow>> {
    sqlx::query_as(WORKERS).fetch_all(pool).await
}

/// Every tenant's id and name.
pub async fn tenant_names(pool: &PgPool) -> sqlx::Result<Vec<(TenantId, String)>> {
    sqlx::query_as(TENANT_NAMES)
        .bind(MAX_TENANTS)
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_filters_match_their_text_literally() {
        assert_eq!(contains_pattern("timeout"), "%timeout%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
