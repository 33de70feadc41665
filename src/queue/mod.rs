//! The job queue: a Postgres table claimed with `FOR UPDATE SKIP LOCKED`.
//!
//! # Layout
//! - [`types`]: states, priorities, new and claimed jobs, outcomes, leases.
//! - [`mod@enqueue`]: single and batch inserts, idempotency keys, delays.
//! - [`mod@claim`]: hands ready jobs to a worker under a lease.
//! - [`mod@finish`]: complete, retry, fail (batched and fenced), cancel.
//! - [`lease`]: heartbeats, the rescuer, releases at shutdown.
//! - [`mod@retry`]: a failed or cancelled job back in the queue, by hand.
//! - [`read`]: a job live or finished, its events, queue statistics, lists.
//! - [`notify`]: LISTEN/NOTIFY wake-ups and waiter registration.
//! - [`gauges`]: the queue depth gauges for Prometheus, refreshed by one
//!   process at a time.
//! - [`maintenance`]: the background loop that rescues and prunes.
//!
//! # Transactions, locks and timeouts
//! Every statement lives in `sql/queue/*.sql`, one per file, and is loaded
//! here only. A claim is one statement committed at once: no transaction or
//! row lock is held while a job runs. A worker holds a job through its lease
//! (owner, attempt, expiry), extended by heartbeats; every write that
//! finishes a job is fenced by (job id, lease owner, attempt), so a worker
//! that lost its lease changes nothing.
//!
//! Jobs of one conversation run one at a time, in enqueue order. The
//! `conversation_queues` row of a conversation counts its live jobs; a job
//! enqueued while the count is non-zero starts out `blocked` and stays out of
//! the claim index until the job before it finishes, in the transaction that
//! finished it. Statements that touch several conversations lock their rows
//! in id order, so they cannot deadlock with each other.

pub mod claim;
pub mod enqueue;
pub mod finish;
pub mod gauges;
pub mod lease;
pub mod maintenance;
pub mod notify;
pub mod read;
pub mod retry;
mod sql;
pub mod types;

pub use claim::{claim, claim_at, FAIR_VERSION};
pub(crate) use enqueue::held_by_rolled_back;
pub use enqueue::{enqueue, enqueue_batch, enqueue_many, Batch, BatchError};
pub(crate) use finish::count_finished;
pub use finish::{begin_generic_plans, cancel, finish, finish_in_tx, Backoff, FinishItem};
pub use lease::{heartbeat, release, rescue, RescueReport};
pub use read::{events, get, list, stats, JobFilter};
pub use retry::retry;
pub use types::*;

use crate::ids::JobId;

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The job is not live under this lease any more: it was rescued after
    /// its lease expired (and maybe finished by another worker), or finished.
    #[error("lease lost for job {0}: it was rescued or finished elsewhere")]
    LeaseLost(JobId),
    /// No such job (for this tenant).
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job cannot be cancelled in its current state.
    #[error("job {id} is {state} and cannot be cancelled")]
    NotCancellable {
        /// The job asked for.
        id: JobId,
        /// The state it is in.
        state: JobState,
    },
    /// The job cannot be retried in its current state (it is live, or
    /// completed, or has used the most attempts a job may have).
    #[error("job {id} is {state} and cannot be retried{detail}")]
    NotRetryable {
        /// The job asked for.
        id: JobId,
        /// The state it is in.
        state: JobState,
        /// Why, when the state does not say it (e.g. ": attempts used up").
        detail: &'static str,
    },
    /// The job's conversation has a later job (live or finished): retrying
    /// it would run an old turn after a newer one.
    #[error("job {0} cannot be retried: a later job of its conversation exists")]
    ConversationMovedOn(JobId),
    /// A job field outside what the schema accepts.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Shorthand for queue results.
pub type Result<T = (), E = QueueError> = std::result::Result<T, E>;

/// The NOTIFY channel that announces claimable jobs to waiting workers.
pub const JOBS_CHANNEL: &str = "skipjack_jobs";
/// The NOTIFY channel that tells workers to stop a running job (payload: the
/// job id); sent by [`cancel`] when it cancels a processing job.
pub const CANCEL_CHANNEL: &str = "skipjack_cancel";
/// The NOTIFY channel that announces finished jobs (comma-separated ids).
pub const DONE_CHANNEL: &str = "skipjack_done";

/// True when the database refused a statement for something in what it was
/// given (a character `text` cannot hold, a number out of range, a broken
/// constraint), or the driver could not encode it: the same statement fails
/// again however often it is retried, so a batch that hit it must be split
/// to find the offending item. False for errors of the connection or of the
/// server's state (connection lost, server shutting down, out of
/// resources, deadlock), which say nothing about the data and are worth
/// retrying as they are.
pub fn is_rejected(err: &QueueError) -> bool {
    let QueueError::Database(err) = err else {
        return false;
    };
    match err {
        sqlx::Error::Database(db) => !matches!(
            db.code().as_deref().map(|code| &code[..code.len().min(2)]),
            // connection, transaction rollback, insufficient resources,
            // operator intervention, system error
            Some("08" | "40" | "53" | "57" | "58") | None
        ),
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => true,
        _ => false,
    }
}

/// True for errors worth retrying the whole transaction for: deadlocks and
/// serialization failures.
pub fn is_transient(err: &sqlx::Error) -> bool {
    matches!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("40P01") | Some("40001")
    )
}
