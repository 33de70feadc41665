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
    /// Waiting to be claimed (ready, delayed, or blocked behind its conversation).
    Queued,
    /// Claimed by a worker under a lease.
    Processing,
    /// Done; its result is in `job_history`.
    Completed,
    /// Failed for good (attempts used up, or an error no retry fixes).
    Failed,
    /// Cancelled by a client or an operator.
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
    /// retry by hand (`queue::retry`) takes a failed or cancelled
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
    /// The lowest priority.
    pub const MIN: Priority = Priority(1);
    /// The highest priority.
    pub const MAX: Priority = Priority(10);

    /// Validates a priority given by a client.
    pub fn new(value: i64) -> Result<Self, InvalidPriority> {
        if (1..=10).contains(&value) {
            Ok(Priority(value as i16))
        } else {
            Err(InvalidPriority(value))
        }
    }

    /// The priority as a number, 1 to 10.
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
    /// Claimed before lower priorities (subject to fair scheduling).
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
    /// Attempts a job gets unless told otherwise.
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

    /// A job of `kind` with `payload`, at the default priority, no tenant and no conversation.
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

    /// At `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Of `tenant`.
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant_id = Some(tenant);
        self
    }

    /// A turn of `conversation`: it runs after the conversation's earlier jobs.
    pub fn with_conversation(mut self, conversation: ConversationId) -> Self {
        self.conversation_id = Some(conversation);
        self
    }

    /// Deduplicated by `key` within its tenant.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the request fingerprint stored with the idempotency key.
    pub fn with_idempotency_fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.idempotency_fingerprint = Some(fingerprint.into());
        self
    }

    /// With `max_attempts` attempts.
    pub fn with_max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Not claimed before `run_at`.
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
    /// The job's id.
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
    /// The job's id.
    pub id: JobId,
    /// Its tenant, if any.
    pub tenant_id: Option<TenantId>,
    /// Its conversation, for chat turns.
    pub conversation_id: Option<ConversationId>,
    /// Which handler runs it.
    pub kind: String,
    /// Its priority.
    pub priority: Priority,
    /// What the handler needs.
    pub payload: Value,
    /// 1 on the first run; part of the lease fence.
    pub attempt: i32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: i32,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// When the job was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When the lease ends unless a heartbeat extends it.
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

    /// The lease `owner` holds on this attempt.
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
    /// The job the lease is on.
    pub job: JobId,
    /// The worker id that claimed it.
    pub owner: String,
    /// The attempt claimed.
    pub attempt: i32,
}

/// One attempt of one job: what a worker's lease covers. A job claimed
/// again after its lease was lost is a new attempt, even by the same worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId {
    /// The job claimed.
    pub job: JobId,
    /// The attempt, from 1.
    pub attempt: i32,
}

/// Tokens an LLM call consumed, recorded in `job_history`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens sent to the model.
    pub input_tokens: i32,
    /// Tokens the model wrote.
    pub output_tokens: i32,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done; `result` is kept in `job_history`.
    Completed {
        /// What the handler returned.
        result: Value,
        /// Tokens the attempt used, when it called a model.
        usage: Option<TokenUsage>,
    },
    /// Failed in a way worth trying again: back to the queue after
    /// `retry_after` (or an exponential backoff with jitter), or failed for
    /// good when the attempts are used up.
    Retry {
        /// Why the attempt failed.
        error: String,
        /// How long to wait, when the failure said (a provider's
        /// `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Failed in a way no retry fixes.
    Failed {
        /// Why the job cannot succeed (kept as its error).
        error: String,
    },
    /// Not run: something the job needs (provider budget) is not available
    /// for `delay`. Back to the queue until then with the attempt not
    /// counted (a 'snoozed' event says why); needs schema 11.
    Snooze {
        /// How long until the job may run again.
        delay: Duration,
        /// What was missing, for the event.
        reason: String,
    },
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
    /// The job's id.
    pub id: JobId,
    /// Its tenant, if any.
    pub tenant_id: Option<TenantId>,
    /// Its conversation, for chat turns.
    pub conversation_id: Option<ConversationId>,
    /// Which handler runs it.
    pub kind: String,
    /// Its priority.
    pub priority: Priority,
    /// Where it is in its life.
    pub state: JobState,
    /// What the handler was given.
    pub payload: Value,
    /// Attempts started.
    pub attempts: i32,
    /// Attempts allowed before it fails for good.
    pub max_attempts: i32,
    /// What a completed job returned.
    pub result: Option<Value>,
    /// The final error, or the last retried one while the job is live.
    pub error: Option<String>,
    /// The lease owner now, or of the last attempt.
    pub worker: Option<String>,
    /// Input tokens of the attempt that completed.
    pub input_tokens: Option<i32>,
    /// Output tokens of the attempt that completed.
    pub output_tokens: Option<i32>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// When it was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a queued job may run next.
    pub run_at: Option<DateTime<Utc>>,
}

/// One row of `job_events`.
#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct JobEvent {
    /// The job the event happened to.
    pub job_id: JobId,
    /// `retried`, `rescued`, `released`, `cancelled` or `snoozed`.
    pub event: String,
    /// The attempt it ended.
    pub attempt: i32,
    /// The attempt's error.
    pub error: Option<String>,
    /// When the job may run again.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The worker that held the attempt.
    pub worker: Option<String>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// A snapshot of the live queue.
#[derive(Clone, Debug, Serialize)]
pub struct QueueStats {
    /// Queued jobs (ready, delayed or blocked) by priority.
    pub depth: std::collections::BTreeMap<i16, i64>,
    /// Jobs being processed.
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
    /// Queued jobs of every priority.
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
