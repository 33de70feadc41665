//! `GET /v1/chat/{job_id}/stream`: a chat job as Server-Sent Events (the
//! contract is docs/streaming.md).
//!
//! Each stream is one task: it follows the job's pieces through the
//! process's [`Hub`](crate::stream::Hub) and its completion through the
//! long-poll machinery (it counts as a long-poll against the same caps, as
//! it holds a request open as long). At completion it sends the pieces not
//! yet sent, read from the database, then the final event: the worker
//! stores a job's last piece before it reports the completion, so the
//! final event never overtakes one.
//!
//! Event ids are `ATTEMPT.SEQ` (the attempt's start is `.0`, its pieces
//! `.1`, `.2`, ...; `0.0` is the queued event) and `end` for the final
//! event; `Last-Event-ID` resumes just after the id it names.

use super::auth::Caller;
use super::chat::JobResponse;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::IdPath;
use super::observe::observed;
use super::AppState;
use crate::ids::JobId;
use crate::metrics::metrics;
use crate::queue::{self, JobState, JobView};
use crate::stream::{Cursor, Delta, Subscription};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;

/// Comment lines while nothing else is sent keep proxies from closing an
/// idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events buffered for a slow client before the stream's task waits.
const BUFFER: usize = 256;

/// The `/v1/chat/{id}/stream` route.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/chat/{job_id}/stream",
        observed("/v1/chat/{job_id}/stream", get(stream)),
    )
}

/// Follows a chat job as Server-Sent Events: `queued`, `started`, the
/// reply's `delta`s in order (for jobs submitted with `"stream": true`),
/// `restarted` when an attempt was interrupted, and `completed`, `failed`
/// or `cancelled` with the job, after which the stream ends. Reconnect with
/// `Last-Event-ID` to resume without a gap or a duplicate; see
/// docs/streaming.md.
#[utoipa::path(
    get, path = "/v1/chat/{job_id}/stream", tag = "chat",
    params(
        ("job_id" = Uuid, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header,
         description = "Resume after this event: `ATTEMPT.SEQ` (two integers 0..=2147483647) or `end`"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream (`text/event-stream`); it ends after the \
final event, or after `SKIPJACK_STREAM_MAX_SECONDS` (default 600), or when the API process shuts \
down: reconnect with Last-Event-ID", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 422, description = "Bad job id or Last-Event-ID", body = ErrorBody),
        (status = 429, description = "`too_many_long_polls`: streams count against the long-poll \
caps (`SKIPJACK_MAX_LONG_POLLS`, `SKIPJACK_MAX_TENANT_LONG_POLLS`); try again after Retry-After",
         body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(Resume::parse).ok_or_else(|| {
            ApiError::invalid(
                "invalid_last_event_id",
                "Last-Event-ID must be an id this stream sent: ATTEMPT.SEQ or end",
            )
        })?),
    };
    let id = JobId(id);
    let job = queue::get(&state.pool, id, Some(caller.tenant))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let (tx, rx) = mpsc::channel::<Event>(BUFFER);
    if job.state.is_final() {
        // Nothing to follow: the final event at once, after the pieces a
        // reconnecting client missed (while they are kept).
        let pool = state.pool.clone();
        tokio::spawn(async move {
            let mut emitter = Emitter::new(tx, resume.unwrap_or(Resume::Start));
            if let (Resume::After(cursor), JobState::Completed) = (emitter.resume, job.state) {
                match crate::stream::read_all(&pool, id, cursor).await {
                    Ok(rest) => {
                        for delta in rest {
                            if !emitter.delta(delta).await {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot read the streamed pieces a client missed");
                        return;
                    }
                }
            }
            let _ = emitter.tx.send(final_event(job)).await;
        });
    } else {
        let admitted = state.long_poll.admit(caller.tenant)?;
        let mut emitter = Emitter::new(tx, resume.unwrap_or(Resume::Start));
        let subscription = state.stream_hub.subscribe(id, emitter.cursor);
        tokio::spawn(async move {
            metrics().streams_open.inc();
            emitter.opening(&job).await;
            let deadline = tokio::time::Instant::now() + state.config.stream_max;
            follow(&state, &admitted, subscription, &mut emitter, id, deadline).await;
            metrics().streams_open.dec();
        });
    }
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// Sends pieces as they come until the job finishes (then the rest and
/// the final event), the client leaves, the deadline passes or the process
/// shuts down.
async fn follow(
    state: &AppState,
    admitted: &super::long_poll::Admitted,
    mut subscription: Subscription,
    emitter: &mut Emitter,
    id: JobId,
    deadline: tokio::time::Instant,
) {
    let finished = state
        .long_poll
        .wait_admitted(admitted, id, deadline, &state.shutdown);
    tokio::pin!(finished);
    loop {
        tokio::select! {
            // The client went away.
            _ = emitter.tx.closed() => return,
            // A piece.
            delta = subscription.recv() => match delta {
                Some(delta) => if !emitter.delta(delta).await { return },
                None => return,
            },
            // Finished, or time is up, or shutting down.
            job = &mut finished => {
                let Ok(Some(job)) = job else { return };
                if !job.state.is_final() {
                    // Deadline or shutdown: the client reconnects.
                    return;
                }
                if job.state == JobState::Completed {
                    match subscription.catch_up(emitter.cursor).await {
                        Ok(rest) => {
                            for delta in rest {
                                if !emitter.delta(delta).await {
                                    return;
                                }
                            }
                        }
                        // Without the last pieces the final event would
                        // be a lie about the text sent: end, and let the
                        // client resume.
                        Err(error) => {
                            tracing::debug!(%error, "cannot read the last streamed pieces");
                            return;
                        }
                    }
                }
                let _ = emitter.tx.send(final_event(job)).await;
                return;
            }
        }
    }
}

/// Where a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// From the beginning.
    Start,
    /// Just after `ATTEMPT.SEQ`.
    After(Cursor),
    /// After the final event: only the final event again.
    End,
}

impl Resume {
    fn parse(id: &str) -> Option<Resume> {
        let id = id.trim();
        if id.is_empty() {
            return Some(Resume::Start);
        }
        if id == "end" {
            return Some(Resume::End);
        }
        let (attempt, seq) = id.split_once('.')?;
        let cursor = Cursor {
            attempt: attempt.parse().ok().filter(|a| *a >= 0)?,
            seq: seq.parse().ok().filter(|s| *s >= 0)?,
        };
        Some(Resume::After(cursor))
    }
}

/// Turns pieces into events, in order and each once.
struct Emitter {
    tx: mpsc::Sender<Event>,
    /// The last piece sent (or the start of the attempt last announced).
    cursor: Cursor,
    /// The attempt whose `started`/`restarted` was sent (0: none).
    announced: i32,
    /// Where the client asked to start.
    resume: Resume,
}

impl Emitter {
    fn new(tx: mpsc::Sender<Event>, resume: Resume) -> Emitter {
        let cursor = match resume {
            Resume::After(cursor) => cursor,
            Resume::Start | Resume::End => Cursor::default(),
        };
        Emitter {
            tx,
            cursor,
            announced: cursor.attempt,
            resume,
        }
    }

    /// The first events of a fresh stream: `queued`, or `started` for the
    /// attempt running now (whose pieces so far follow).
    async fn opening(&mut self, job: &JobView) {
        if self.resume != Resume::Start && self.resume != Resume::End {
            return;
        }
        match job.state {
            JobState::Processing if job.attempts > 0 => {
                self.cursor = Cursor {
                    attempt: job.attempts,
                    seq: 0,
                };
                self.announced = job.attempts;
                let event = Event::default()
                    .event("started")
                    .id(format!("{}.0", job.attempts))
                    .data(json!({ "attempt": job.attempts }).to_string());
                let _ = self.tx.send(event).await;
            }
            _ => {
                let event = Event::default()
                    .event("queued")
                    .id("0.0")
                    .data(job_json(job.clone()));
                let _ = self.tx.send(event).await;
            }
        }
    }

    /// Sends `delta` (after announcing its attempt) unless it was sent;
    /// false when the client is gone.
    async fn delta(&mut self, delta: Delta) -> bool {
        let at = Cursor::after(&delta);
        if at <= self.cursor {
            return true;
        }
        if delta.attempt != self.announced {
            let event = if self.announced == 0 {
                Event::default()
                    .event("started")
                    .data(json!({ "attempt": delta.attempt }).to_string())
            } else {
                Event::default().event("restarted").data(
                    json!({ "attempt": delta.attempt, "previous_attempt": self.announced })
                        .to_string(),
                )
            };
            if self
                .tx
                .send(event.id(format!("{}.0", delta.attempt)))
                .await
                .is_err()
            {
                return false;
            }
            self.announced = delta.attempt;
        }
        self.cursor = at;
        let event = Event::default()
            .event("delta")
            .id(format!("{}.{}", delta.attempt, delta.seq))
            .data(json!({ "attempt": delta.attempt, "text": delta.text }).to_string());
        self.tx.send(event).await.is_ok()
    }
}

/// The job as `GET /v1/chat/{id}` shows it.
fn job_json(job: JobView) -> String {
    // A struct of plain fields always serializes.
    serde_json::to_string(&JobResponse::from(job)).unwrap_or_default()
}

/// `completed`, `failed` or `cancelled`, with the job.
fn final_event(job: JobView) -> Event {
    Event::default()
        .event(job.state.as_str())
        .id("end")
        .data(job_json(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_parse_as_sent() {
        assert_eq!(Resume::parse("end"), Some(Resume::End));
        assert_eq!(Resume::parse(""), Some(Resume::Start));
        assert_eq!(
            Resume::parse("2.17"),
            Some(Resume::After(Cursor {
                attempt: 2,
                seq: 17
            }))
        );
        for bad in [
            "x",
            "1",
            "1.",
            ".1",
            "-1.0",
            "1.-2",
            "1.2.3",
            "99999999999.0",
        ] {
            assert_eq!(Resume::parse(bad), None, "{bad}");
        }
    }
}
