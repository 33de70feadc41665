//! Wake-ups: LISTEN on a dedicated connection, and the waiter registry that
//! lets statements skip their NOTIFY when nobody is waiting.
//!
//! A NOTIFY makes its transaction take a database-wide lock at commit, so the
//! queue's statements notify once per statement, and only while the channel
//! has a registered waiter (`queue_waiters`). Waiters register *before* their
//! last look at the queue, so a job enqueued after that look finds them
//! registered and notifies; one enqueued before it is seen by the look.
//!
//! A LISTEN connection can die in two ways: loudly (the server closes it:
//! a restart, a failover, `pg_terminate_backend`) or silently (a network
//! path that drops packets, a server host that vanished: the socket stays
//! open and no notification ever arrives). The loud way shows up as an end
//! of stream. For the silent way, sqlx offers no TCP keepalive on its
//! sockets, so the listener probes itself: every [`ListenerConfig::probe_interval`]
//! it sends a NOTIFY on a channel of its own over its own connection and
//! must hear it back within [`ListenerConfig::probe_timeout`]; the round
//! trip proves both that the connection is alive and that its LISTENs are in
//! effect. Either way the listener opens a fresh connection (its own, never
//! one of the pool's: a dead one is dropped rather than returned).
//!
//! Notifications sent while it was away are lost, and after a crash the
//! unlogged `queue_waiters` comes back empty, so the listener reports
//! [`Wakeup::Reconnected`] once it listens again: its owner registers as a
//! waiter again and re-checks the database instead of trusting that nothing
//! happened.

use super::{sql, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgExecutor, PgPool};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the listener reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The first connection listens: from now on no notification is missed.
    Listening,
    /// A NOTIFY on one of the channels.
    Notification {
        /// The channel notified.
        channel: String,
        /// The notification's payload.
        payload: String,
    },
    /// The connection was lost and a new one listens again: anything may
    /// have happened meanwhile, and registrations may be gone.
    Reconnected,
}

/// How the listener checks its connection.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Time between self-probes of an idle connection.
    pub probe_interval: Duration,
    /// How long a probe (or a connection attempt) may take before the
    /// connection is declared dead.
    pub probe_timeout: Duration,
    /// Suffix of the connection's `application_name` (after the pool's
    /// own), so operators can tell the LISTEN session apart.
    pub name: String,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(5),
            name: "listener".to_owned(),
        }
    }
}

/// Delay before reconnecting after an error, doubling up to the maximum.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Spawns a task that LISTENs on `channels` over its own connection (not one
/// of the pool's) and calls `on_wakeup` for each notification, until
/// `shutdown` is cancelled. Probes with the default [`ListenerConfig`].
pub fn spawn_listener<F>(
    pool: PgPool,
    channels: Vec<&'static str>,
    on_wakeup: F,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    F: Fn(Wakeup) + Send + Sync + 'static,
{
    spawn_listener_with(
        pool,
        channels,
        ListenerConfig::default(),
        on_wakeup,
        shutdown,
    )
}

/// [`spawn_listener`] with explicit probe settings.
pub fn spawn_listener_with<F>(
    pool: PgPool,
    channels: Vec<&'static str>,
    config: ListenerConfig,
    on_wakeup: F,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    F: Fn(Wakeup) + Send + Sync + 'static,
{
    // A channel of this listener's own: nobody else hears its probes.
    let probe_channel = format!("skipjack_probe_{:016x}", rand::random::<u64>());
    tokio::spawn(async move {
        let mut backoff = RECONNECT_MIN;
        let mut first = true;
        let mut sequence: u64 = 0;
        loop {
            let connected = tokio::select! {
                // Shutting down while (re)connecting.
                _ = shutdown.cancelled() => return,
                listener = tokio::time::timeout(
                    config.probe_timeout,
                    connect(&pool, &config.name, &channels, &probe_channel),
                ) => listener,
            };
            let mut listener = match connected {
                Ok(Ok(listener)) => listener,
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            // LISTEN has returned on this connection: it is in effect.
            if first {
                on_wakeup(Wakeup::Listening);
            } else {
                tracing::info!("LISTEN connection re-established");
                on_wakeup(Wakeup::Reconnected);
            }
            first = false;
            backoff = RECONNECT_MIN;
            let mut next_probe = Instant::now() + config.probe_interval;
            loop {
                tokio::select! {
                    // Shutting down: drop the connection.
                    _ = shutdown.cancelled() => return,
                    // try_recv is cancel-safe: a message is taken from the
                    // socket buffer only once complete.
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) => {
                            // Any traffic proves the connection alive.
                            next_probe = Instant::now() + config.probe_interval;
                            if n.channel() != probe_channel {
                                tracing::trace!(channel = n.channel(), payload = n.payload(), "notification");
                                on_wakeup(Wakeup::Notification {
                                    channel: n.channel().to_owned(),
                                    payload: n.payload().to_owned(),
                                });
                            }
                        }
                        // The connection dropped: open a new one.
                        Ok(None) | Err(_) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            break;
                        }
                    },
                    // Quiet for a while: is the connection still there?
                    _ = tokio::time::sleep_until(next_probe) => {
                        sequence += 1;
                        let heard = tokio::time::timeout(
                            config.probe_timeout,
                            probe(&mut listener, &probe_channel, sequence, &on_wakeup),
                        )
                        .await;
                        match heard {
                            Ok(Ok(())) => next_probe = Instant::now() + config.probe_interval,
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "LISTEN connection failed its probe; reconnecting");
                                break;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    timeout_ms = config.probe_timeout.as_millis() as u64,
                                    "LISTEN connection did not answer its probe; reconnecting"
                                );
                                break;
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A fresh connection of its own that LISTENs on `channels` and the probe
/// channel. Built on a one-connection pool made for it, so a connection
/// declared dead is simply dropped with that pool.
async fn connect(
    pool: &PgPool,
    name: &str,
    channels: &[&'static str],
    probe_channel: &str,
) -> sqlx::Result<PgListener> {
    let options = pool.connect_options();
    let application_name = format!(
        "{}-{name}",
        options.get_application_name().unwrap_or("skipjack")
    );
    let options = (*options).clone().application_name(&application_name);
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own).await?;
    // Reconnecting is this module's job: a lost connection ends `try_recv`.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener
        .listen_all(channels.iter().copied().chain([probe_channel]))
        .await?;
    Ok(listener)
}

/// Sends a NOTIFY to the listener over its own connection and waits to hear
/// it, passing on any other notification that arrives meanwhile.
async fn probe<F>(
    listener: &mut PgListener,
    probe_channel: &str,
    sequence: u64,
    on_wakeup: &F,
) -> sqlx::Result<()>
where
    F: Fn(Wakeup),
{
    let payload = sequence.to_string();
    sqlx::query(sql::LISTENER_PROBE)
        .bind(probe_channel)
        .bind(&payload)
        .execute(&mut *listener)
        .await?;
    loop {
        match listener.try_recv().await? {
            Some(n) if n.channel() == probe_channel => {
                if n.payload() == payload {
                    return Ok(());
                }
            }
            Some(n) => on_wakeup(Wakeup::Notification {
                channel: n.channel().to_owned(),
                payload: n.payload().to_owned(),
            }),
            None => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "LISTEN connection closed during its probe",
                )))
            }
        }
    }
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

/// Which of `jobs` are finished (in `job_history`): one index probe per id,
/// so a process re-checks all its waiting long-polls in one statement.
pub async fn finished_among<'e>(
    executor: impl PgExecutor<'e>,
    jobs: &[crate::ids::JobId],
) -> Result<Vec<crate::ids::JobId>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(sql::WAITER_RECHECK)
        .bind(jobs)
        .fetch_all(executor)
        .await?)
}
