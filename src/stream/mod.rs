//! Streamed replies: the pieces of a reply on their way from the worker that
//! receives them from the provider to the API replica that serves the
//! client's event stream (docs/streaming.md).
//!
//! # Transport
//! Pieces travel through one short-lived, unlogged table,
//! `stream_deltas` (job, attempt, seq, text), not one NOTIFY each: a
//! transaction that notified takes a database-wide lock at commit, and a
//! thousand streams at twenty pieces a second would serialise every commit
//! behind it.
//! - [`publish`]: each worker buffers the pieces of all the jobs it streams
//!   and writes them every `SKIPJACK_STREAM_FLUSH_MS` in one statement,
//!   which also NOTIFYs [`STREAM_CHANNEL`] with the ids of the jobs written
//!   (200 to a payload).
//! - [`hub`]: each API replica keeps one cursor per open stream and, on each
//!   NOTIFY, reads what is new for the streams it serves among the jobs
//!   named, in one statement (and for all of them on its fallback poll). Any replica can serve any stream, and a client that
//!   reconnects with `Last-Event-ID` resumes from its cursor.
//!
//! The stored reply is written once, at completion, as for any job; the
//! worker writes a job's last pieces before it reports the completion, so a
//! stream always has every piece before the final event. The table is
//! pruned by age ([`prune`]).
//!
//! # Attempts
//! Pieces are keyed by attempt: when an attempt is interrupted (its worker
//! died, or the provider failed part way), the next attempt's pieces start
//! again at seq 1, and readers see them after every piece of the earlier
//! attempt, never mixed with them.

pub mod hub;
pub mod publish;

use crate::ids::JobId;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

pub use hub::{Hub, HubConfig, Subscription};
pub use publish::{Publisher, PublisherConfig, StreamArgs, StreamWriter};

/// The channel the publishers notify after each write.
pub const STREAM_CHANNEL: &str = "skipjack_stream";

mod sql {
    crate::sql::sql_files!("stream" {
        PUBLISH => "publish.sql",
        READ => "read.sql",
        PRUNE => "prune.sql",
    });
}

/// One piece of a streamed reply.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Delta {
    /// The job whose reply this is.
    pub job_id: JobId,
    /// The attempt that received it.
    pub attempt: i32,
    /// 1, 2, ... within the attempt.
    pub seq: i32,
    /// The text.
    pub text: String,
}

/// A position in a job's stream: the last piece sent, (0, 0) before the
/// first. Ordered as the pieces are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// Attempt of the last piece sent (0: none yet).
    pub attempt: i32,
    /// Its seq within the attempt (0: the attempt's start).
    pub seq: i32,
}

impl Cursor {
    /// Just after `delta`.
    pub fn after(delta: &Delta) -> Cursor {
        Cursor {
            attempt: delta.attempt,
            seq: delta.seq,
        }
    }
}

/// Writes pieces (normally through a [`Publisher`]).
pub async fn write<'e>(executor: impl PgExecutor<'e>, deltas: &[Delta]) -> sqlx::Result<u64> {
    let ids: Vec<JobId> = deltas.iter().map(|d| d.job_id).collect();
    let attempts: Vec<i32> = deltas.iter().map(|d| d.attempt).collect();
    let seqs: Vec<i32> = deltas.iter().map(|d| d.seq).collect();
    let texts: Vec<&str> = deltas.iter().map(|d| d.text.as_str()).collect();
    let (written, _notified): (i64, i64) = sqlx::query_as(sql::PUBLISH)
        .bind(ids)
        .bind(attempts)
        .bind(seqs)
        .bind(texts)
        .fetch_one(executor)
        .await?;
    Ok(written as u64)
}

/// Most pieces [`read`] returns per job; a reader that got this many reads
/// again from the last.
pub const READ_LIMIT: i64 = 1000;

/// The pieces after each `(job, cursor)`, in stream order per job, at most
/// [`READ_LIMIT`] per job.
pub async fn read<'e>(
    executor: impl PgExecutor<'e>,
    cursors: &[(JobId, Cursor)],
) -> sqlx::Result<Vec<Delta>> {
    let ids: Vec<JobId> = cursors.iter().map(|(j, _)| *j).collect();
    let attempts: Vec<i32> = cursors.iter().map(|(_, c)| c.attempt).collect();
    let seqs: Vec<i32> = cursors.iter().map(|(_, c)| c.seq).collect();
    sqlx::query_as(sql::READ)
        .bind(ids)
        .bind(attempts)
        .bind(seqs)
        .bind(READ_LIMIT)
        .fetch_all(executor)
        .await
}

/// Every piece of `job` after `cursor`, however many.
pub async fn read_all(pool: &PgPool, job: JobId, mut cursor: Cursor) -> sqlx::Result<Vec<Delta>> {
    let mut out = Vec::new();
    loop {
        let page = read(pool, &[(job, cursor)]).await?;
        let full = page.len() as i64 >= READ_LIMIT;
        if let Some(last) = page.last() {
            cursor = Cursor::after(last);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Drops pieces written before `before`, `batch` rows per statement; the
/// number dropped.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>, batch: i64) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql::PRUNE)
            .bind(before)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}
