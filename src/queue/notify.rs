//! Wake-ups: LISTEN on a dedicated connection, and the waiter registry that
//! lets statements skip their NOTIFY when nobody is waiting.
//!
//! A NOTIFY makes its transaction take a database-wide lock at commit, so the
//! queue's statements notify once per statement, and only while the channel
//! has a registered waiter (`queue_waiters`). Waiters register *before* their
//! last look at the queue, so a job enqueued after that look finds them
//! registered and notifies; one enqueued before it is seen by the look.
//!
//! The listener reconnects by itself after its connection drops (a restart,
//! a failover, `pg_terminate_backend`). Notifications sent while it was away
//! are lost, so it reports [`Wakeup::Reconnected`] and its owner re-checks
//! the database instead of trusting that nothing happened.

use super::{sql, Result};
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the listener reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// A NOTIFY on one of the channels.
    Notification { channel: String, payload: String },
    /// The connection was lost and is being re-established: anything may
    /// have happened meanwhile.
    Reconnected,
}

/// Delay before reconnecting after an error, doubling up to the maximum.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Spawns a task that LISTENs on `channels` over its own connection (not one
/// of the pool's) and calls `on_wakeup` for each notification, until
/// `shutdown` is cancelled.
pub fn spawn_listener<F>(
    pool: PgPool,
    channels: Vec<&'static str>,
    on_wakeup: F,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    F: Fn(Wakeup) + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut backoff = RECONNECT_MIN;
        let mut first = true;
        loop {
            let connected = tokio::select! {
                // Shutting down while (re)connecting.
                _ = shutdown.cancelled() => return,
                listener = connect(&pool, &channels) => listener,
            };
            let mut listener = match connected {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            if !first {
                // Listening again: catch up on what was missed meanwhile.
                tracing::info!("LISTEN connection re-established");
                on_wakeup(Wakeup::Reconnected);
            }
            first = false;
            backoff = RECONNECT_MIN;
            loop {
                tokio::select! {
                    // Shutting down: drop the connection.
                    _ = shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) => {
                            tracing::trace!(channel = n.channel(), payload = n.payload(), "notification");
                            on_wakeup(Wakeup::Notification {
                            channel: n.channel().to_owned(),
                            payload: n.payload().to_owned(),
                        })},
                        // The connection dropped: open a new one.
                        Ok(None) | Err(_) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    })
}

async fn connect(pool: &PgPool, channels: &[&'static str]) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

/// Registers `waiter` as waiting on `channel` (or refreshes it).
pub async fn register_waiter<'e>(
    executor: impl PgExecutor<'e>,
    channel: &str,
    waiter: &str,
) -> Result<()> {
    sqlx::query(sql::WAITER_REGISTER)
        .bind(channel)
        .bind(waiter)
        .execute(executor)
        .await?;
    Ok(())
}

/// Removes `waiter` from `channel`'s waiters.
pub async fn unregister_waiter<'e>(
    executor: impl PgExecutor<'e>,
    channel: &str,
    waiter: &str,
) -> Result<()> {
    sqlx::query(sql::WAITER_UNREGISTER)
        .bind(channel)
        .bind(waiter)
        .execute(executor)
        .await?;
    Ok(())
}
