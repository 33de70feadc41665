//! Operator commands on jobs, behind `skipjack jobs`: show one job with its
//! events, list jobs by state, retry failed or cancelled jobs (one by one
//! or all failed since a time), cancel jobs. The CLI only parses arguments
//! and prints; everything else is here.

use crate::ids::{JobId, TenantId};
use crate::queue::{self, JobEvent, JobFilter, JobState, JobView, QueueError};
use crate::tenants::{self, TenantError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::fmt::Write as _;
use std::time::Duration;

/// Errors of operator commands.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// From the queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// From tenants (an unknown tenant name).
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// A duration such as `1h` or `30m` that does not parse.
    #[error("invalid duration {0:?}: use e.g. 90s, 30m, 1h, 2d")]
    Duration(String),
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Shorthand for operator results.
pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// Parses a duration such as `1h`, `30m`, `2d 4h` (humantime's syntax).
pub fn parse_duration(text: &str) -> Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|_| OperatorError::Duration(text.to_owned()))
}

/// `now - ago`, clamped to the earliest representable time.
pub fn since(ago: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A tenant given by name or id.
pub async fn resolve_tenant(pool: &PgPool, name_or_id: &str) -> Result<TenantId> {
    Ok(tenants::find_tenant(pool, name_or_id).await?.id)
}

/// One job with its events: what `skipjack jobs show` prints.
#[derive(Clone, Debug, Serialize)]
pub struct JobDetail {
    /// The job as it is now.
    pub job: JobView,
    /// Retries, rescues, cancellation, releases and manual retries, oldest
    /// first.
    pub events: Vec<JobEvent>,
}

impl JobDetail {
    /// A human-readable rendering.
    pub fn text(&self) -> String {
        let j = &self.job;
        let mut out = String::new();
        let _ = writeln!(out, "job           {}", j.id);
        let _ = writeln!(out, "state         {}", j.state);
        let _ = writeln!(out, "kind          {}", j.kind);
        if let Some(tenant) = j.tenant_id {
            let _ = writeln!(out, "tenant        {tenant}");
        }
        if let Some(conversation) = j.conversation_id {
            let _ = writeln!(out, "conversation  {conversation}");
        }
        let _ = writeln!(out, "priority      {}", j.priority.get());
        let _ = writeln!(out, "attempts      {} of {}", j.attempts, j.max_attempts);
        let _ = writeln!(out, "created       {}", j.created_at);
        if let Some(t) = j.started_at {
            let _ = writeln!(out, "started       {t}");
        }
        if let Some(t) = j.run_at {
            let _ = writeln!(out, "runs at       {t}");
        }
        if let Some(t) = j.finished_at {
            let _ = writeln!(out, "finished      {t}");
            let took = (t - j.created_at).num_milliseconds() as f64 / 1e3;
            let _ = writeln!(out, "total         {took:.3} s");
        }
        if let Some(worker) = &j.worker {
            let _ = writeln!(out, "worker        {worker}");
        }
        if let Some(error) = &j.error {
            let _ = writeln!(out, "error         {error}");
        }
        if self.events.is_empty() {
            let _ = writeln!(out, "events        none");
        } else {
            let _ = writeln!(out, "events");
            for e in &self.events {
                let _ = write!(out, "  {} {} attempt {}", e.created_at, e.event, e.attempt);
                if let Some(worker) = &e.worker {
                    let _ = write!(out, " ({worker})");
                }
                if let Some(error) = &e.error {
                    let _ = write!(out, ": {error}");
                }
                out.push('\n');
            }
        }
        out
    }
}

/// One job and its events; `None` when there is no such job.
pub async fn show(pool: &PgPool, id: JobId) -> Result<Option<JobDetail>> {
    let Some(job) = queue::get(pool, id, None).await? else {
        return Ok(None);
    };
    let events = queue::events(pool, id).await?;
    Ok(Some(JobDetail { job, events }))
}

/// What to list: `skipjack jobs list`.
#[derive(Clone, Debug, Default)]
pub struct ListArgs {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Tenant name or id.
    pub tenant: Option<String>,
    /// Only jobs finished (or, while live, created) this recently.
    pub since: Option<Duration>,
    /// Most jobs listed.
    pub limit: i64,
}

/// Jobs matching `args`, newest first.
pub async fn list(pool: &PgPool, args: &ListArgs) -> Result<Vec<JobView>> {
    let tenant = match &args.tenant {
        Some(t) => Some(resolve_tenant(pool, t).await?),
        None => None,
    };
    let filter = JobFilter {
        state: args.state,
        tenant,
        since: args.since.map(since),
        limit: args.limit,
    };
    Ok(queue::list(pool, &filter).await?)
}

/// One line per job, for `skipjack jobs list`.
pub fn list_text(jobs: &[JobView]) -> String {
    let mut out = String::new();
    for j in jobs {
        let at = j.finished_at.unwrap_or(j.created_at);
        let error = j.error.as_deref().unwrap_or("");
        let error: String = error.chars().take(120).collect();
        let _ = writeln!(
            out,
            "{}  {:<10} {}  attempts {}/{}  {}",
            j.id, j.state, at, j.attempts, j.max_attempts, error
        );
    }
    out
}

/// What a bulk command did: the jobs it changed and the ones it was refused,
/// with why.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct BulkReport {
    /// The jobs changed.
    pub done: Vec<JobId>,
    /// The jobs refused, with why.
    pub refused: Vec<Refusal>,
}

/// A job a command was refused for.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Refusal {
    /// The job refused.
    pub id: JobId,
    /// Stable: `not_found`, `not_retryable`, `conversation_moved_on`,
    /// `not_cancellable`, `error`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub reason: String,
}

impl BulkReport {
    fn refuse(&mut self, id: JobId, error: QueueError) {
        let code = match &error {
            QueueError::NotFound(_) => "not_found",
            QueueError::NotRetryable { .. } => "not_retryable",
            QueueError::ConversationMovedOn(_) => "conversation_moved_on",
            QueueError::NotCancellable { .. } => "not_cancellable",
            _ => "error",
        };
        self.refused.push(Refusal {
            id,
            code,
            reason: error.to_string(),
        });
    }

    /// `verb` lines for what was done, `refused` lines for the rest.
    pub fn text(&self, verb: &str) -> String {
        let mut out = String::new();
        for id in &self.done {
            let _ = writeln!(out, "{verb} {id}");
        }
        for r in &self.refused {
            let _ = writeln!(out, "refused {} ({}): {}", r.id, r.code, r.reason);
        }
        let _ = writeln!(
            out,
            "{} {verb}, {} refused",
            self.done.len(),
            self.refused.len()
        );
        out
    }
}

/// Retries each of `ids` (failed or cancelled jobs), in order.
pub async fn retry(pool: &PgPool, ids: &[JobId]) -> Result<BulkReport> {
    let mut report = BulkReport::default();
    for &id in ids {
        match queue::retry(pool, id, None).await {
            Ok(()) => report.done.push(id),
            Err(QueueError::Database(e)) => return Err(e.into()),
            Err(error) => report.refuse(id, error),
        }
    }
    Ok(report)
}

/// Retries every job that failed in the last `ago` (of `tenant`, name or
/// id, when given), oldest first, at most `limit`. Jobs whose conversation
/// moved on are refused and reported.
pub async fn retry_failed_since(
    pool: &PgPool,
    ago: Duration,
    tenant: Option<&str>,
    limit: i64,
) -> Result<BulkReport> {
    let mut jobs = list(
        pool,
        &ListArgs {
            state: Some(JobState::Failed),
            tenant: tenant.map(str::to_owned),
            since: Some(ago),
            limit,
        },
    )
    .await?;
    jobs.reverse();
    let ids: Vec<JobId> = jobs.into_iter().map(|j| j.id).collect();
    retry(pool, &ids).await
}

/// Cancels each of `ids` (queued or processing), in order.
pub async fn cancel(pool: &PgPool, ids: &[JobId], reason: &str) -> Result<BulkReport> {
    let mut report = BulkReport::default();
    for &id in ids {
        match queue::cancel(pool, id, None, reason).await {
            Ok(_) => report.done.push(id),
            Err(QueueError::Database(e)) => return Err(e.into()),
            Err(error) => report.refuse(id, error),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_usual_units() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(
            parse_duration(" 2d 4h ").unwrap(),
            Duration::from_secs(2 * 86_400 + 4 * 3600)
        );
        assert!(matches!(
            parse_duration("soon"),
            Err(OperatorError::Duration(_))
        ));
        assert!(since(Duration::from_secs(3600)) < Utc::now());
        assert_eq!(since(Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
