//! Following a turn over `GET /v1/chat/{id}/stream` (`--stream`), as
//! docs/streaming.md specifies it: the state of one turn's stream across
//! its connections, and the checks on it.
//!
//! [`TurnStream`] is fed the events of every connection of a turn in the
//! order they arrive. It keeps the last id (sent as `Last-Event-ID` on a
//! reconnect), the text of the current attempt (dropped on `started` and
//! `restarted`) and the timings the report needs, and it notes every
//! departure from the contract:
//! - ids must strictly increase (`A.S` by attempt, then sequence; `end`
//!   last), across reconnects too (an event that breaks the order is
//!   reported and otherwise ignored);
//! - a `delta` must belong to the current attempt and carry the next
//!   sequence number (no gap, no duplicate);
//! - nothing may follow the final event (`completed`, `failed`,
//!   `cancelled`);
//! - the concatenated text of the last attempt must equal the `completed`
//!   event's `response` ([`TurnStream::text_mismatch`]).

use super::client::JobStatus;
use chrono::{DateTime, Utc};
use eventsource_stream::Event;
use serde::Deserialize;
use std::cmp::Ordering;
use std::fmt;
use std::time::Instant;

/// Departures from the contract kept per turn (the first few are enough to
/// tell what went wrong).
const MAX_VIOLATIONS: usize = 5;

/// An event's `id`: `A.S` (attempt, sequence; `0.0` for `queued`) or `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventId {
    /// Attempt `attempt`, piece `seq` (0 for `queued`, `started` and
    /// `restarted`).
    At { attempt: u32, seq: u64 },
    /// The final event.
    End,
}

impl EventId {
    /// Parses `A.S` or `end`.
    pub fn parse(text: &str) -> Option<EventId> {
        if text == "end" {
            return Some(EventId::End);
        }
        let (attempt, seq) = text.split_once('.')?;
        Some(EventId::At {
            attempt: attempt.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::At { attempt, seq } => write!(f, "{attempt}.{seq}"),
            EventId::End => f.write_str("end"),
        }
    }
}

#[derive(Deserialize)]
struct AttemptData {
    attempt: u32,
}

#[derive(Deserialize)]
struct DeltaData {
    attempt: u32,
    text: String,
}

#[derive(Deserialize)]
struct RestartedData {
    attempt: u32,
    previous_attempt: u32,
}

/// The final event of a turn's stream.
#[derive(Clone, Debug)]
pub struct FinalEvent {
    /// `completed`, `failed` or `cancelled`.
    pub name: String,
    /// The finished job.
    pub job: JobStatus,
    /// When it arrived.
    pub at: Instant,
}

/// What the caller does after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read on.
    Continue,
    /// The final event has arrived (now or before): the stream should end.
    Final,
}

/// One turn's stream, over all its connections.
#[derive(Debug, Default)]
pub struct TurnStream {
    /// The raw id of the last event, for `Last-Event-ID`.
    last_raw_id: Option<String>,
    /// The highest id so far.
    last_id: Option<EventId>,
    /// The attempt the deltas now belong to.
    attempt: Option<u32>,
    /// The last delta's sequence number in `attempt` (0: none yet).
    seq: u64,
    /// The text of `attempt` so far.
    text: String,
    /// Deltas received (all attempts).
    pub deltas: u64,
    /// `restarted` events received.
    pub restarted: u64,
    /// The first delta of the turn (any attempt): what a reader first sees.
    pub first_delta: Option<Instant>,
    /// The first delta of the current attempt, and the wall clock then (to
    /// compare with the job's `started_at`).
    pub attempt_first_delta: Option<(Instant, DateTime<Utc>)>,
    last_delta: Option<Instant>,
    /// Time between consecutive deltas of an attempt, in microseconds.
    pub gaps_us: Vec<u64>,
    final_event: Option<FinalEvent>,
    /// Departures from the contract (the first [`MAX_VIOLATIONS`]).
    pub violations: Vec<String>,
    /// All departures, counted.
    pub violation_count: u64,
}

impl TurnStream {
    pub fn new() -> Self {
        TurnStream::default()
    }

    /// The id to send as `Last-Event-ID` when reconnecting (none before the
    /// first event).
    pub fn resume_id(&self) -> Option<&str> {
        self.last_raw_id.as_deref()
    }

    /// The final event, once it arrived.
    pub fn final_event(&self) -> Option<&FinalEvent> {
        self.final_event.as_ref()
    }

    /// The text of the current (last) attempt.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Deltas of the current attempt so far.
    pub fn attempt_deltas(&self) -> u64 {
        self.seq
    }

    /// The current attempt, once one started.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    fn violation(&mut self, what: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(what);
        }
    }

    /// Takes one event in. `now` and `wall` are its arrival.
    pub fn on_event(&mut self, event: &Event, now: Instant, wall: DateTime<Utc>) -> Step {
        let name = event.event.as_str();
        if self.final_event.is_some() {
            self.violation(format!(
                "{name} event (id {:?}) after the final event",
                event.id
            ));
            return Step::Final;
        }
        let Some(id) = EventId::parse(&event.id) else {
            self.violation(format!("{name} event with id {:?}", event.id));
            return Step::Continue;
        };
        if let Some(last) = self.last_id {
            if id.cmp(&last) != Ordering::Greater {
                // Reported, and not applied: a repeated piece would
                // otherwise be counted twice in the text.
                self.violation(format!("{name} event id {id} after id {last}"));
                return Step::Continue;
            }
        }
        self.last_id = Some(id);
        self.last_raw_id = Some(event.id.clone());

        match name {
            "queued" => {
                if id != (EventId::At { attempt: 0, seq: 0 }) {
                    self.violation(format!("queued event with id {id}, not 0.0"));
                }
            }
            "started" => match serde_json::from_str::<AttemptData>(&event.data) {
                Ok(d) => {
                    self.expect_id(name, id, d.attempt, 0);
                    self.start_attempt(d.attempt);
                }
                Err(e) => self.violation(format!("started event {id}: {e}")),
            },
            "restarted" => match serde_json::from_str::<RestartedData>(&event.data) {
                Ok(d) => {
                    self.expect_id(name, id, d.attempt, 0);
                    self.restarted += 1;
                    if d.previous_attempt >= d.attempt {
                        self.violation(format!(
                            "restarted event {id}: attempt {} after attempt {}",
                            d.attempt, d.previous_attempt
                        ));
                    }
                    if let Some(current) = self.attempt {
                        if current != d.previous_attempt {
                            self.violation(format!(
                                "restarted event {id}: previous attempt {}, but deltas were of attempt {current}",
                                d.previous_attempt
                            ));
                        }
                    }
                    self.start_attempt(d.attempt);
                }
                Err(e) => self.violation(format!("restarted event {id}: {e}")),
            },
            "delta" => match serde_json::from_str::<DeltaData>(&event.data) {
                Ok(d) => self.on_delta(id, d, now, wall),
                Err(e) => self.violation(format!("delta event {id}: {e}")),
            },
            "completed" | "failed" | "cancelled" => {
                if id != EventId::End {
                    self.violation(format!("{name} event with id {id}, not end"));
                }
                match serde_json::from_str::<JobStatus>(&event.data) {
                    Ok(job) => {
                        if job.status != name {
                            self.violation(format!(
                                "{name} event carries a job with status {:?}",
                                job.status
                            ));
                        }
                        self.final_event = Some(FinalEvent {
                            name: name.to_owned(),
                            job,
                            at: now,
                        });
                        return Step::Final;
                    }
                    Err(e) => self.violation(format!("{name} event: {e}")),
                }
            }
            other => self.violation(format!("unknown event {other:?} (id {id})")),
        }
        Step::Continue
    }

    fn expect_id(&mut self, name: &str, id: EventId, attempt: u32, seq: u64) {
        let want = EventId::At { attempt, seq };
        if id != want {
            self.violation(format!("{name} event with id {id}, its data says {want}"));
        }
    }

    /// `started` or `restarted`: the deltas that follow are `attempt`'s,
    /// from the start.
    fn start_attempt(&mut self, attempt: u32) {
        self.attempt = Some(attempt);
        self.seq = 0;
        self.text.clear();
        self.attempt_first_delta = None;
        self.last_delta = None;
    }

    fn on_delta(&mut self, id: EventId, d: DeltaData, now: Instant, wall: DateTime<Utc>) {
        self.deltas += 1;
        match id {
            EventId::At { attempt, seq } if attempt == d.attempt => {
                if self.attempt != Some(attempt) {
                    self.violation(format!(
                        "delta {id} of attempt {attempt}, but the current attempt is {}",
                        self.attempt
                            .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
                    ));
                    // Follow the server: the deltas are of this attempt now.
                    self.start_attempt(attempt);
                }
                if seq != self.seq + 1 {
                    self.violation(format!(
                        "delta {id} after delta {attempt}.{} (a gap or a repeat)",
                        self.seq
                    ));
                }
                self.seq = seq;
            }
            _ => self.violation(format!(
                "delta event with id {id}, its data says attempt {}",
                d.attempt
            )),
        }
        self.text.push_str(&d.text);
        self.first_delta.get_or_insert(now);
        if self.attempt_first_delta.is_none() {
            self.attempt_first_delta = Some((now, wall));
        }
        if let Some(last) = self.last_delta {
            self.gaps_us
                .push(now.saturating_duration_since(last).as_micros() as u64);
        }
        self.last_delta = Some(now);
    }

    /// For a `completed` final event: how the streamed text differs from
    /// the job's `response` (`None` when it equals it, or the turn did not
    /// complete).
    pub fn text_mismatch(&self) -> Option<String> {
        let f = self.final_event.as_ref()?;
        if f.name != "completed" {
            return None;
        }
        let response = f.job.response.as_deref().unwrap_or("");
        (self.text != response).then(|| {
            format!(
                "streamed text {:?} is not the response {:?}",
                self.text, response
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    use std::convert::Infallible;
    use std::time::Duration;

    /// The events a server sends as raw bytes, cut into `piece`-byte
    /// chunks (so events straddle reads), parsed as the client parses them.
    async fn parse(raw: &str, piece: usize) -> Vec<Event> {
        let chunks: Vec<Result<Vec<u8>, Infallible>> = raw
            .as_bytes()
            .chunks(piece)
            .map(|c| Ok(c.to_vec()))
            .collect();
        futures_util::stream::iter(chunks)
            .eventsource()
            .map(|e| e.expect("valid SSE"))
            .collect()
            .await
    }

    fn job(status: &str, response: Option<&str>) -> String {
        let mut job = serde_json::json!({
            "job_id": "00000000-0000-0000-0000-000000000001",
            "status": status,
            "attempts": 2,
            "started_at": "2024-05-01T12:00:00.5Z",
        });
        if let Some(r) = response {
            job["response"] = r.into();
        }
        job.to_string()
    }

    fn feed(stream: &mut TurnStream, events: &[Event], start: Instant) -> Vec<Step> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = start + Duration::from_millis(10 * i as u64);
                stream.on_event(e, at, Utc::now())
            })
            .collect()
    }

    /// The first connection: queued, attempt 1 writes two pieces and is
    /// interrupted, attempt 2 writes one piece; then the connection ends.
    const FIRST: &str = concat!(
        ": keep-alive\n\n",
        "event: queued\nid: 0.0\ndata: {JOB_QUEUED}\n\n",
        "event: started\nid: 1.0\ndata: {\"attempt\": 1}\n\n",
        "event: delta\nid: 1.1\ndata: {\"attempt\": 1, \"text\": \"echo(1\"}\n\n",
        "event: delta\nid: 1.2\ndata: {\"attempt\": 1, \"text\": \"): tu\"}\n\n",
        "event: restarted\nid: 2.0\ndata: {\"attempt\": 2, \"previous_attempt\": 1}\n\n",
        "event: delta\nid: 2.1\ndata: {\"attempt\": 2, \"text\": \"echo(1): \"}\n\n",
    );
    /// The reconnect, after `Last-Event-ID: 2.1`.
    const SECOND: &str = concat!(
        ": keep-alive\n\n",
        "event: delta\r\nid: 2.2\r\ndata: {\"attempt\": 2, \"text\": \"turn 1 \\u00e9\"}\r\n\r\n",
        "event: delta\nid: 2.3\ndata: {\"attempt\": 2, \"text\": \"\"}\n\n",
        "event: completed\nid: end\ndata: {JOB_DONE}\n\n",
    );

    fn first() -> String {
        FIRST.replace("{JOB_QUEUED}", &job("queued", None))
    }

    fn second(response: &str) -> String {
        SECOND.replace("{JOB_DONE}", &job("completed", Some(response)))
    }

    #[tokio::test]
    async fn a_restarted_and_reconnected_stream_yields_the_last_attempts_text() {
        for piece in [1, 7, 4096] {
            let start = Instant::now();
            let mut s = TurnStream::new();
            let steps = feed(&mut s, &parse(&first(), piece).await, start);
            assert!(steps.iter().all(|s| *s == Step::Continue));
            assert_eq!(s.resume_id(), Some("2.1"));
            assert_eq!(s.text(), "echo(1): ");
            assert!(s.final_event().is_none());

            let later = start + Duration::from_secs(1);
            let events = parse(&second("echo(1): turn 1 é"), piece).await;
            assert_eq!(events.len(), 3, "the keep-alive comment is no event");
            let steps = feed(&mut s, &events, later);
            assert_eq!(steps.last(), Some(&Step::Final));
            assert_eq!(s.violations, Vec::<String>::new());
            assert_eq!(s.text(), "echo(1): turn 1 é");
            assert_eq!(s.text_mismatch(), None);
            assert_eq!(s.restarted, 1);
            assert_eq!(s.deltas, 5);
            assert_eq!(s.attempt(), Some(2));
            // The first delta of the turn is attempt 1's; the overhead is
            // measured from attempt 2's.
            assert_eq!(s.first_delta, Some(start + Duration::from_millis(20)));
            assert_eq!(
                s.attempt_first_delta.map(|(at, _)| at),
                Some(start + Duration::from_millis(50))
            );
            // Gaps: 1.1→1.2 (10 ms); attempt 2: 2.1→2.2 across the
            // reconnect, 2.2→2.3.
            assert_eq!(s.gaps_us, vec![10_000, 1_000_000 - 50_000, 10_000]);
            let f = s.final_event().expect("final event");
            assert_eq!(f.name, "completed");
            assert_eq!(
                f.job.started_at.map(|t| t.timestamp_millis() % 1000),
                Some(500)
            );
        }
    }

    #[tokio::test]
    async fn text_that_differs_from_the_response_is_a_mismatch() {
        let mut s = TurnStream::new();
        feed(&mut s, &parse(&first(), 64).await, Instant::now());
        feed(
            &mut s,
            &parse(&second("echo(1): turn 1"), 64).await,
            Instant::now(),
        );
        assert!(s.violations.is_empty());
        assert!(s
            .text_mismatch()
            .is_some_and(|m| m.contains("\"echo(1): turn 1 é\"")));
    }

    #[tokio::test]
    async fn replayed_ids_gaps_and_events_after_the_end_are_violations() {
        // A reconnect that replays 2.1, skips 2.2, and sends a delta after
        // the final event.
        let replay = concat!(
            "event: delta\nid: 2.1\ndata: {\"attempt\": 2, \"text\": \"echo(1): \"}\n\n",
            "event: delta\nid: 2.3\ndata: {\"attempt\": 2, \"text\": \"turn 1 é\"}\n\n",
            "event: completed\nid: end\ndata: {JOB_DONE}\n\n",
            "event: delta\nid: 2.4\ndata: {\"attempt\": 2, \"text\": \"!\"}\n\n",
        )
        .replace("{JOB_DONE}", &job("completed", Some("echo(1): turn 1 é")));
        let mut s = TurnStream::new();
        feed(&mut s, &parse(&first(), 64).await, Instant::now());
        let steps = feed(&mut s, &parse(&replay, 64).await, Instant::now());
        assert_eq!(
            steps,
            [Step::Continue, Step::Continue, Step::Final, Step::Final]
        );
        assert_eq!(s.violation_count, 3, "{:?}", s.violations);
        assert!(s.violations[0].contains("id 2.1 after id 2.1"));
        assert!(s.violations[1].contains("gap or a repeat"));
        assert!(s.violations[2].contains("after the final event"));
        // The replayed piece was not applied twice.
        assert_eq!(s.text_mismatch(), None);
    }

    #[tokio::test]
    async fn a_stream_joined_late_starts_with_the_running_attempt() {
        // Connecting while attempt 3 runs: `started` at connect, no
        // `queued`; then a failure.
        let raw = concat!(
            "event: started\nid: 3.0\ndata: {\"attempt\": 3}\n\n",
            "event: delta\nid: 3.1\ndata: {\"attempt\": 3, \"text\": \"ec\"}\n\n",
            "event: failed\nid: end\ndata: {JOB}\n\n",
        )
        .replace("{JOB}", &job("failed", None));
        let mut s = TurnStream::new();
        let steps = feed(&mut s, &parse(&raw, 5).await, Instant::now());
        assert_eq!(steps.last(), Some(&Step::Final));
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert_eq!(s.final_event().map(|f| f.name.as_str()), Some("failed"));
        // Only a completed turn's text is compared.
        assert_eq!(s.text_mismatch(), None);
    }

    #[test]
    fn ids_order_by_attempt_then_sequence_with_end_last() {
        let id = |s| EventId::parse(s).expect("valid id");
        assert!(id("0.0") < id("1.0"));
        assert!(id("1.9") < id("1.10"));
        assert!(id("1.10") < id("2.0"));
        assert!(id("99.1") < id("end"));
        assert_eq!(id("2.13").to_string(), "2.13");
        assert_eq!(EventId::parse("2"), None);
        assert_eq!(EventId::parse("a.1"), None);
    }
}
