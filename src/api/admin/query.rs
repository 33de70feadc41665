//! The console's reads, shared by its pages and by `/v1/admin`: one page
//! of jobs by filters with a keyset cursor, one job with its events, one
//! conversation with its turns, and the numbers of the overview. Every
//! statement is a file under `sql/admin/`.

use crate::ids::{ConversationId, JobId, TenantId};
use crate::queue::{self, JobEvent, JobState, JobView, Priority};
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};

crate::sql::sql_files!("admin" {
    READ_SNAPSHOT => "read_snapshot.sql",
    CUSTOM_PLANS => "custom_plans.sql",
    JOBS_LIVE => "jobs_live.sql",
    JOBS_HISTORY => "jobs_history.sql",
    THROUGHPUT => "throughput.sql",
    WORKERS => "workers.sql",
    TENANT_NAMES => "tenant_names.sql",
    BUDGETS => "budgets.sql",
    CONVERSATION => "conversation.sql",
    CONVERSATION_MESSAGES => "conversation_messages.sql",
    CONVERSATION_JOBS => "conversation_jobs.sql",
});

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
/// Longest a list statement may run. Scans are bounded ([`SCAN_BUDGET`]),
/// so only a database that is overloaded or a table locked by someone else
/// gets here: the caller is told to try again rather than wait on.
pub const LIST_TIMEOUT: &str = "5s";
/// Most tenants named on the overview.
const MAX_TENANTS: i64 = 10_000;

/// Which jobs to list. `None` filters are not applied.
#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only this tenant's jobs.
    pub tenant: Option<TenantId>,
    /// Only jobs of this priority.
    pub priority: Option<Priority>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only this conversation's jobs.
    pub conversation: Option<ConversationId>,
    /// Submitted at or after (to the millisecond, by the time in the job's
    /// UUIDv7 id).
    pub since: Option<DateTime<Utc>>,
    /// Submitted before (likewise).
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
    /// The jobs of the page, newest first.
    pub jobs: Vec<JobView>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<JobId>,
    /// When the page holds fewer than `limit` jobs but is not the last:
    /// the search stopped at its budget, having looked at every job
    /// submitted since this time.
    pub searched_to: Option<DateTime<Utc>>,
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
/// id covered: jobs submitted later never shift the pages after it.
///
/// Each source scans at most [`SCAN_BUDGET`] jobs (those an index narrows
/// to in id order: state, conversation, time range) and filters them by the
/// rest, so every page costs a bounded amount whatever the filters. A page
/// may therefore hold fewer than `limit` jobs, even none, and still have a
/// `next_cursor`: the search went that far and can go on.
pub async fn list_jobs(pool: &PgPool, q: &JobQuery) -> sqlx::Result<JobPage> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let mut tx = pool.begin().await?;
    sqlx::query(READ_SNAPSHOT).execute(&mut *tx).await?;
    sqlx::query(CUSTOM_PLANS)
        .bind(LIST_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    let mut jobs = Vec::new();
    // The lowest id down to which every source has looked, when one
    // stopped before the end.
    let mut covered: Option<JobId> = None;
    for sql in list_statements(q) {
        let rows: Vec<Scanned> = sqlx::query_as_with(sql, list_arguments(sql, q, limit)?)
            .fetch_all(&mut *tx)
            .await?;
        let (hits, stopped_at) = source_page(rows, limit + 1);
        if let Some(at) = stopped_at {
            covered = Some(covered.map_or(at, |c| c.max(at)));
        }
        jobs.extend(hits);
    }
    tx.commit().await?;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    if let Some(covered) = covered {
        jobs.retain(|j| j.id >= covered);
    }
    let (next_cursor, searched_to) = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        (jobs.last().map(|j| j.id), None)
    } else {
        (covered, covered.and_then(id_time))
    };
    Ok(JobPage {
        jobs,
        next_cursor,
        searched_to,
    })
}

/// The plans (`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)`) of the statements
/// [`list_jobs`] runs for `q`, with the same parameters and settings: the
/// table each reads (`jobs`, `job_history`) and its plan. For looking at
/// how a filter set is served (`docs/console-plans.md`); the transaction
/// is rolled back.
pub async fn explain_list_jobs(
    pool: &PgPool,
    q: &JobQuery,
) -> sqlx::Result<Vec<(&'static str, String)>> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let mut plans = Vec::new();
    for sql in list_statements(q) {
        let table = if sql == JOBS_HISTORY {
            "job_history"
        } else {
            "jobs"
        };
        let mut tx = pool.begin().await?;
        sqlx::query(CUSTOM_PLANS)
            .bind(LIST_TIMEOUT)
            .execute(&mut *tx)
            .await?;
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}");
        let lines: Vec<String> = sqlx::query_scalar_with(&explain, list_arguments(sql, q, limit)?)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        plans.push((table, lines.join("\n")));
    }
    Ok(plans)
}

/// The list statements `q` needs: [`JOBS_LIVE`], [`JOBS_HISTORY`] or both.
fn list_statements(q: &JobQuery) -> Vec<&'static str> {
    match q.state {
        None => vec![JOBS_LIVE, JOBS_HISTORY],
        Some(s) if s.is_final() => vec![JOBS_HISTORY],
        Some(_) => vec![JOBS_LIVE],
    }
}

/// The parameters of list statement `sql` for `q`, pages of `limit`.
fn list_arguments(sql: &str, q: &JobQuery, limit: i64) -> sqlx::Result<PgArguments> {
    let below = match (q.cursor, q.until.map(|t| JobId(id_floor(t)))) {
        (Some(c), Some(u)) => Some(c.min(u)),
        (c, u) => c.or(u),
    };
    let mut args = PgArguments::default();
    let add = |result: Result<(), sqlx::error::BoxDynError>| result.map_err(sqlx::Error::Encode);
    add(args.add(q.state))?;
    add(args.add(q.tenant))?;
    add(args.add(q.priority))?;
    add(args.add(q.kind.clone()))?;
    add(args.add(q.conversation))?;
    add(args.add(q.since.map(|t| JobId(id_floor(t)))))?;
    add(args.add(below))?;
    add(args.add(q.error.as_deref().map(contains_pattern)))?;
    add(args.add(limit + 1))?;
    add(args.add(SCAN_BUDGET))?;
    if sql == JOBS_HISTORY {
        add(args.add(q.since))?;
    }
    Ok(args)
}

/// Most jobs one list statement scans (each of live and finished): the
/// bound on a page's cost when its filters match few jobs.
pub const SCAN_BUDGET: i64 = 5_000;

/// A row of jobs_live.sql or jobs_history.sql.
#[derive(sqlx::FromRow)]
struct Scanned {
    #[sqlx(flatten)]
    job: JobView,
    /// Whether it matches every filter.
    hit: bool,
    /// Its position in the scan, from 1.
    scanned: i64,
}

/// The hits of one source, at most `want`, and the id it has looked down
/// to when it stopped before the end (`None`: nothing below matches).
fn source_page(rows: Vec<Scanned>, want: i64) -> (Vec<JobView>, Option<JobId>) {
    let mut hits = Vec::new();
    let mut stopped_at = None;
    for row in rows {
        if row.scanned == SCAN_BUDGET {
            stopped_at = Some(row.job.id);
        }
        if row.hit && (hits.len() as i64) < want {
            hits.push(row.job);
            if hits.len() as i64 == want {
                stopped_at = hits.last().map(|j: &JobView| j.id);
                break;
            }
        }
    }
    (hits, stopped_at)
}

/// The time in a UUIDv7 id (its leading 48 bits: milliseconds since the
/// epoch).
fn id_time(id: JobId) -> Option<DateTime<Utc>> {
    let ms = i64::try_from(id.0.as_u128() >> 80).ok()?;
    DateTime::from_timestamp_millis(ms)
}

/// The lowest UUIDv7 of the millisecond `t` (clamped to the epoch): jobs
/// submitted at or after `t` have ids at or above it.
fn id_floor(t: DateTime<Utc>) -> uuid::Uuid {
    let ms = u128::try_from(t.timestamp_millis())
        .unwrap_or(0)
        .min((1 << 48) - 1);
    uuid::Uuid::from_u128(ms << 80)
}

/// One job with its events.
#[derive(Clone, Debug, Serialize)]
pub struct JobDetail {
    /// The job as it is now.
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
    /// Position in the conversation, from 1.
    pub seq: i32,
    /// Who wrote it.
    pub role: crate::llm::Role,
    /// The text.
    pub content: String,
    /// The job whose completion appended it.
    pub job_id: Option<JobId>,
    /// Tokens the provider reported for it.
    pub tokens: Option<i32>,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// A conversation's header row.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ConversationHead {
    /// The conversation's id.
    pub id: ConversationId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// The application's user it belongs to.
    pub user_id: String,
    /// True for the user's default conversation.
    pub is_default: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A conversation: its turns in order and its jobs in submission order.
#[derive(Clone, Debug, Serialize)]
pub struct Conversation {
    /// Its header row.
    pub conversation: ConversationHead,
    /// Its turns, in order.
    pub turns: Vec<Turn>,
    /// Its jobs, in submission order.
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
    /// The minute's start (UTC).
    pub minute: DateTime<Utc>,
    /// Jobs completed in it.
    pub completed: i64,
    /// Jobs failed in it.
    pub failed: i64,
    /// Jobs cancelled in it.
    pub cancelled: i64,
}

/// A worker alive: holding leases or waiting for work.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    /// The worker's id.
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

/// A provider budget's row (sql/admin/budgets.sql).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BudgetRow {
    /// The endpoint's URL without credentials, and its position.
    pub endpoint: String,
    /// The model the budget is for.
    pub model: String,
    /// Last reservation (or creation).
    pub updated_at: DateTime<Utc>,
    /// Requests per minute recorded by the workers, if limited.
    pub rpm: Option<i64>,
    /// Tokens per minute recorded by the workers, if limited.
    pub tpm: Option<i64>,
    /// Requests that may go at once.
    pub request_burst: Option<i64>,
    /// Tokens that may go at once.
    pub token_burst: Option<i64>,
    /// How far ahead of now the request budget is booked, in seconds.
    pub requests_ahead_s: f64,
    /// How far ahead of now the token budget is booked, in seconds.
    pub tokens_ahead_s: f64,
}

/// Most provider budgets shown.
const MAX_BUDGETS: i64 = 100;

/// The provider budgets (schema 11 and later).
pub async fn budgets(pool: &PgPool) -> sqlx::Result<Vec<BudgetRow>> {
    sqlx::query_as(BUDGETS)
        .bind(MAX_BUDGETS)
        .fetch_all(pool)
        .await
}

/// How much of a budget with `limit` per minute and `burst` is in use when
/// it is spent `ahead_s` seconds ahead of now: the units that could not go
/// at once now, 0..=burst (GCRA: one unit costs `60 / (limit - burst)`
/// seconds; see [`crate::llm::budget`]). `None` without a limit.
pub fn budget_in_use(limit: Option<i64>, burst: Option<i64>, ahead_s: f64) -> Option<f64> {
    let (limit, burst) = (limit? as f64, burst? as f64);
    if limit <= burst || burst <= 0.0 {
        return None;
    }
    let interval = 60.0 / (limit - burst);
    Some((ahead_s / interval).clamp(0.0, burst))
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
    fn budget_use_counts_the_units_spent_ahead_of_now() {
        // 600/min with a burst of 30: one request costs 60 / 570 s.
        let interval = 60.0 / 570.0;
        assert_eq!(budget_in_use(Some(600), Some(30), 0.0), Some(0.0));
        let twelve = budget_in_use(Some(600), Some(30), 12.0 * interval).unwrap();
        assert!((twelve - 12.0).abs() < 1e-9, "{twelve}");
        assert_eq!(budget_in_use(Some(600), Some(30), 3600.0), Some(30.0));
        assert_eq!(budget_in_use(None, Some(30), 1.0), None);
        assert_eq!(budget_in_use(Some(600), None, 1.0), None);
    }

    #[test]
    fn id_bounds_follow_the_time_in_uuidv7_ids() {
        let t = DateTime::parse_from_rfc3339("2026-12-03T04:05:06.789Z")
            .unwrap()
            .with_timezone(&Utc);
        let floor = JobId(id_floor(t));
        assert_eq!(id_time(floor), Some(t));
        let before = t - ChronoDuration::milliseconds(1);
        let id = JobId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            t.timestamp_subsec_nanos(),
        )));
        assert!(id >= floor);
        assert!(JobId(id_floor(before)) < floor);
        assert_eq!(id_floor(DateTime::<Utc>::MIN_UTC), uuid::Uuid::nil());
    }

    #[test]
    fn error_filters_match_their_text_literally() {
        assert_eq!(contains_pattern("timeout"), "%timeout%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
