//! The queue's vocabulary: job states, priorities, new jobs, claimed jobs,
//! outcomes and the lease that fences them.

use crate::ids::{ConversationId, JobId, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Where a job is in its life. `Queued` and `Processing` jobs live in `jobs`;
/// the other three are final and live in `job_history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    /// The status word of the interface contract.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for the states of finished jobs (in `job_history`). Only a
    /// retry by hand ([`crate::queue::retry`]) takes a failed or cancelled
    /// job back to the queue.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job priority, 1..=10; higher runs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct Priority(i16);

impl Priority {
    pub const MIN: Priority = Priority(1);
    pub const MAX: Priority = Priority(10);

    /// Validates a priority given by a client.
    pub fn new(value: i64) -> Result<Self, InvalidPriority> {
        if (1..=10).contains(&value) {
            Ok(Priority(value as i16))
        } else {
            Err(InvalidPriority(value))
        }
    }

    pub fn get(self) -> i16 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::MIN
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        Priority::new(value).map_err(serde::de::Error::custom)
    }
}

/// A priority outside 1..=10.
#[derive(Debug, thiserror::Error)]
#[error("priority must be between 1 and 10, got {0}")]
pub struct InvalidPriority(pub i64);

/// A job to enqueue. Build with [`NewJob::new`] and the `with_*` methods.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Chooses the handler that runs the job.
    pub kind: String,
    /// What the handler needs, as JSON.
    pub payload: Value,
    pub priority: Priority,
    /// The owner; `None` for jobs that belong to no tenant.
    pub tenant_id: Option<TenantId>,
    /// Jobs of one conversation run one at a time, in enqueue order.
    pub conversation_id: Option<ConversationId>,
    /// Enqueueing the same key again (per tenant) returns the first job.
    pub idempotency_key: Option<String>,
    /// What the request behind the key was (a hash of it), stored with the
    /// key: a later enqueue with the key and another fingerprint is told so
    /// ([`Enqueued::key_reused`]). `None`: not checked.
    pub idempotency_fingerprint: Option<Vec<u8>>,
    /// Attempts before a retryable failure becomes final.
    pub max_attempts: i32,
    /// Not before this time (a delay); `None` means now.
    pub run_at: Option<DateTime<Utc>>,
}

impl NewJob {
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            priority: Priority::default(),
            tenant_id: None,
            conversation_id: None,
            idempotency_key: None,
            idempotency_fingerprint: None,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            run_at: None,
        }
    }

    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant_id = Some(tenant);
        self
    }

    pub fn with_conversation(mut self, conversation: ConversationId) -> Self {
        self.conversation_id = Some(conversation);
        self
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the request fingerprint stored with the idempotency key.
    pub fn with_idempotency_fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.idempotency_fingerprint = Some(fingerprint.into());
        self
    }

    pub fn with_max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    pub fn with_run_at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    /// Delays the job by `delay` from now.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.run_at = Some(Utc::now() + delay);
        self
    }
}

/// What an enqueue did with one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub id: JobId,
    /// False when the idempotency key already named a job: `id` is that job.
    pub inserted: bool,
    /// True when the key already named a job of *another* request (both
    /// fingerprints known and different): `id` is that other job, which
    /// this request must not be answered with.
    pub key_reused: bool,
}

/// A job handed to a worker by a claim.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub tenant_id: Option<TenantId>,
    pub conversation_id: Option<ConversationId>,
    pub kind: String,
    pub priority: Priority,
    pub payload: Value,
    /// 1 on the first run; part of the lease fence.
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    /// When the job was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    pub lease_expires_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// The fence for this attempt.
    /// This attempt of this job.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId {
            job: self.id,
            attempt: self.attempt,
        }
    }

    pub fn lease(&self, owner: &str) -> Lease {
        Lease {
            job: self.id,
            owner: owner.to_owned(),
            attempt: self.attempt,
        }
    }
}

/// Who may finish a job: the worker that claimed it, for that attempt. A
/// worker whose lease expired and whose job was rescued (and maybe claimed
/// again) no longer matches, so its late writes change nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job: JobId,
    pub owner: String,
    pub attempt: i32,
}

/// One attempt of one job: what a worker's lease covers. A job claimed
/// again after its lease was lost is a new attempt, even by the same worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId {
    pub job: JobId,
    pub attempt: i32,
}

/// Tokens an LLM call consumed, recorded in `job_history`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: i32,
    pub output_tokens: i32,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done; `result` is kept in `job_history`.
    Completed {
        result: Value,
        usage: Option<TokenUsage>,
    },
    /// Failed in a way worth trying again: back to the queue after
    /// `retry_after` (or an exponential backoff with jitter), or failed for
    /// good when the attempts are used up.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Failed in a way no retry fixes.
    Failed { error: String },
    /// Not run: something the job needs (provider budget) is not available
    /// for `delay`. Back to the queue until then with the attempt not
    /// counted (a 'snoozed' event says why); needs schema 11.
    Snooze { delay: Duration, reason: String },
}

impl Outcome {
    /// The same outcome with every U+0000 in its result and error replaced
    /// (see [`crate::text`]), so that Postgres can store it. Copies nothing
    /// when there is none.
    pub fn without_nul(self) -> Outcome {
        use crate::text::{json_without_nul, without_nul};
        use std::borrow::Cow;
        fn clean(error: String) -> String {
            match without_nul(&error) {
                Cow::Borrowed(_) => error,
                Cow::Owned(clean) => clean,
            }
        }
        match self {
            Outcome::Completed { result, usage } => Outcome::Completed {
                result: match json_without_nul(&result) {
                    Cow::Borrowed(_) => result,
                    Cow::Owned(clean) => clean,
                },
                usage,
            },
            Outcome::Retry { error, retry_after } => Outcome::Retry {
                error: clean(error),
                retry_after,
            },
            Outcome::Failed { error } => Outcome::Failed {
                error: clean(error),
            },
            Outcome::Snooze { delay, reason } => Outcome::Snooze {
                delay,
                reason: clean(reason),
            },
        }
    }
}

/// A job as readers see it, live or finished (the `all_jobs` view).
#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub tenant_id: Option<TenantId>,
    pub conversation_id: Option<ConversationId>,
    pub kind: String,
    pub priority: Priority,
    pub state: JobState,
    pub payload: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub result: Option<Value>,
    /// The final error, or the last retried one while the job is live.
    pub error: Option<String>,
    /// The lease owner now, or of the last attempt.
    pub worker: Option<String>,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When a queued job may run next.
    pub run_at: Option<DateTime<Utc>>,
}

/// One row of `job_events`.
#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub event: String,
    pub attempt: i32,
    pub error: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A snapshot of the live queue.
#[derive(Clone, Debug, Serialize)]
pub struct QueueStats {
    /// Queued jobs (ready, delayed or blocked) by priority.
    pub depth: std::collections::BTreeMap<i16, i64>,
    pub processing: i64,
    /// Age of the oldest job that is ready to run now, 0 when none is.
    pub oldest_queued_age_seconds: f64,
    /// The ten tenants whose oldest ready job has waited longest: (tenant
    /// name, `""` for jobs without a tenant; seconds), longest first. For
    /// the operators' gauges only: never serialised, so no tenant sees
    /// another's name or wait.
    #[serde(skip)]
    pub tenant_waits: Vec<(String, f64)>,
}

impl QueueStats {
    pub fn total(&self) -> i64 {
        self.depth.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Priority;

    #[test]
    fn the_metrics_label_every_priority() {
        assert_eq!(
            crate::metrics::PRIORITIES,
            Priority::MIN.get()..=Priority::MAX.get()
        );
    }
}
