//! The run: virtual users, the controller that starts and parks them as the
//! profile says, the queue sampler, the progress line, the soak's interim
//! reports, and the final transcript check.
//!
//! # A virtual user
//! User `i` (user id `lg-{run}-{i}`, and so its own default conversation)
//! is active while the profile asks for more than `i` users. Active, it
//! loops: submit turn k, long-poll until the job is finished, check the
//! reply, think (`think ± jitter`, uniform), repeat.
//!
//! With `--stream` it submits with `"stream": true` and reads
//! `GET /v1/chat/{id}/stream` instead of long-polling (docs/streaming.md):
//! a connection that ends without the final event is reopened with
//! `Last-Event-ID` (a reconnect; a broken or silent one is also a request
//! error), and besides the reply check the stream must keep the contract
//! (see [`super::stream`]); a turn that breaks it is an integrity
//! mismatch. A user that the profile
//! no longer wants finishes its turn and parks; when it is wanted again it
//! waits a random part of the think time (so a crowd does not arrive in
//! lock-step) and goes on with the same conversation.
//!
//! A 429 is counted and the same turn is sent again after `Retry-After`
//! (plus up to 10%, so rejected users do not come back together); it stays
//! one turn. A transport error or an unexpected status is counted and the
//! turn is retried after a second with the same idempotency key (so it can
//! never be queued twice); after three failed submissions the turn is lost
//! and the user stops.
//!
//! # End of the run
//! At the end of the profile no new turn starts; turns in flight get
//! `drain_timeout` to finish, after which they count as lost. Turns waiting
//! out a 429 then are abandoned (never accepted: not an error).

use super::check::{self, check_reply, check_transcript};
use super::client::{ApiClient, JobStatus, Submitted};
use super::profile::format_duration;
use super::report::{self, IntervalReport, Report};
use super::stats::{load_average, process_cpu_time, Counters, QueueSample, Recorder, UserFairness};
use super::stream::TurnStream;
use super::{LoadgenError, ProgressMode, RunConfig, INTERRUPTED_DRAIN};
use futures_util::StreamExt;
use rand::Rng;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the controller re-reads the profile.
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// How often the queue is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The progress line's "current p95" covers this much of the recent past.
const RECENT: Duration = Duration::from_secs(10);
/// Redraw period of the progress line on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(500);
/// Wait before retrying a failed request.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Failed submissions of one turn after which it is given up.
const MAX_SUBMIT_ERRORS: u32 = 3;
/// Conversations whose transcripts are fetched at once at the end.
const TRANSCRIPT_FETCHES: usize = 16;
/// `--stream`: longest wait for a stream's response headers.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// `--stream`: a connection silent this long is dead (the server sends a
/// keep-alive comment every 15 s); it is reopened.
const STREAM_IDLE: Duration = Duration::from_secs(40);
/// `--stream`: time the server gets to end a stream after its final event.
const AFTER_FINAL: Duration = Duration::from_secs(5);

/// What every task of the run shares.
struct Shared {
    config: RunConfig,
    client: ApiClient,
    recorder: Arc<Recorder>,
    /// Users the profile wants now.
    target: watch::Receiver<usize>,
    /// End of the profile: start no new turn.
    stop: CancellationToken,
    /// End of the drain: give up on turns in flight.
    hard: CancellationToken,
}

/// How one user's run went: what the transcript check needs.
#[derive(Debug, Default)]
struct UserOutcome {
    user_id: String,
    conversation_id: Option<String>,
    /// The messages of the turns that completed, in order.
    completed: Vec<String>,
    /// A turn of this user was lost or got an integrity error: its
    /// conversation cannot be checked against `completed`.
    unreliable: bool,
    /// How its turns fared against admission control.
    turns: Turns,
}

/// A user's turns against admission control (see [`UserFairness`]); times
/// since the start of the run.
#[derive(Debug, Default)]
struct Turns {
    fairness: UserFairness,
    /// It was active at some point.
    active: bool,
    /// Since when it has been without a turn: its arrival (or return from
    /// being parked) or its last accepted turn.
    since: Option<Duration>,
}

impl Turns {
    fn arrived(&mut self, now: Duration) {
        self.active = true;
        self.since = Some(now);
    }

    /// A turn was accepted at `now`, after 429s since `refused_since`.
    fn accepted(&mut self, now: Duration, refused_since: Option<Duration>) {
        self.cut(now, refused_since);
        self.fairness.served += 1;
        self.since = Some(now);
    }

    /// The gap (and the 429 streak) so far end at `now`.
    fn cut(&mut self, now: Duration, refused_since: Option<Duration>) {
        let f = &mut self.fairness;
        if let Some(since) = self.since.take() {
            f.max_gap = f.max_gap.max(now.saturating_sub(since));
        }
        if let Some(since) = refused_since {
            f.longest_refused = f.longest_refused.max(now.saturating_sub(since));
        }
    }
}

/// How one turn ended.
enum TurnEnd {
    /// Finished (completed, failed or an unexpected status); the user goes on.
    Done,
    /// The run ended before the turn was accepted.
    Abandoned,
    /// The turn is lost; the user stops (its history is unknown).
    Lost,
}

/// Runs the load described by `config` against the API and returns the
/// report (not yet written anywhere).
pub async fn run(config: RunConfig) -> Result<Report, LoadgenError> {
    let users = config.profile.max_users();
    let client = ApiClient::new(&config.base_url, config.api_key.clone(), users)
        .map_err(|e| LoadgenError::Setup(format!("HTTP client: {e}")))?;
    // Fail fast on a wrong URL or key, before any user starts.
    client.queue().await.map_err(|e| {
        LoadgenError::Setup(format!(
            "the API at {} did not answer GET /v1/queue: {e}",
            config.base_url
        ))
    })?;

    let run_id = config.run_id.clone();
    let started_at = chrono::Utc::now();
    let load_start = load_average();
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let (target_tx, target_rx) = watch::channel(config.profile.users_at(Duration::ZERO));
    recorder
        .target_users
        .store(*target_rx.borrow(), Ordering::Relaxed);
    let shared = Arc::new(Shared {
        config,
        client,
        recorder: recorder.clone(),
        target: target_rx,
        stop: CancellationToken::new(),
        hard: CancellationToken::new(),
    });

    let background = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(sampler(shared.clone(), background.clone()));
    helpers.spawn(progress(shared.clone(), background.clone()));
    let intervals = Arc::new(Mutex::new(Vec::new()));
    if let Some(every) = shared.config.profile.report_every() {
        helpers.spawn(interim_reports(
            shared.clone(),
            every,
            intervals.clone(),
            background.clone(),
        ));
    }

    let mut users_set = JoinSet::new();
    for i in 0..users {
        users_set.spawn(user(i, shared.clone()));
    }

    // The controller: follow the profile until its end, or until every user
    // has finished (a fixed number of turns each).
    let duration = shared.config.profile.duration();
    let mut outcomes = Vec::with_capacity(users);
    let mut tick = tokio::time::interval(CONTROL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            done = users_set.join_next() => match done {
                Some(result) => { outcomes.push(joined(result)); continue; }
                None => break,
            },
            _ = shared.config.interrupt.cancelled() => break,
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let wanted = shared.config.profile.users_at(elapsed);
        recorder.target_users.store(wanted, Ordering::Relaxed);
        target_tx.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }
    let run_time = start.elapsed().min(duration);
    shared.stop.cancel();

    // Drain: turns in flight finish, or are lost at the deadline.
    let drain_start = Instant::now();
    let drain_timeout = if shared.config.interrupt.is_cancelled() {
        shared.config.drain_timeout.min(INTERRUPTED_DRAIN)
    } else {
        shared.config.drain_timeout
    };
    let drain = tokio::time::sleep(drain_timeout);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            done = users_set.join_next() => match done {
                Some(result) => outcomes.push(joined(result)),
                None => break,
            },
            _ = &mut drain, if !shared.hard.is_cancelled() => shared.hard.cancel(),
        }
    }
    let drain_time = drain_start.elapsed();
    let cpu = cpu_start
        .zip(process_cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    background.cancel();
    while helpers.join_next().await.is_some() {}
    if shared.config.progress != ProgressMode::Off && std::io::stderr().is_terminal() {
        eprintln!();
    }

    let transcripts = verify_transcripts(&shared, &outcomes).await;
    let intervals = std::mem::take(&mut *intervals.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(report::build(report::Inputs {
        config: &shared.config,
        run_id,
        started_at,
        recorder: &recorder,
        run_time,
        drain_time,
        intervals,
        transcripts,
        load_start,
        load_end: load_average(),
        cpu,
    }))
}

fn joined(result: Result<UserOutcome, tokio::task::JoinError>) -> UserOutcome {
    // A user task only ends by returning (it has no panicking path); a
    // panic would be a bug worth seeing.
    result.expect("virtual user task panicked")
}

/// One virtual user, until the run stops or one of its turns is lost.
async fn user(index: usize, shared: Arc<Shared>) -> UserOutcome {
    let config = &shared.config;
    let recorder = &shared.recorder;
    let mut outcome = UserOutcome {
        user_id: format!("lg-{}-{index}", config.run_id),
        ..UserOutcome::default()
    };
    let mut target = shared.target.clone();
    let mut parked = true;
    let mut k = 0u64;
    loop {
        if shared.stop.is_cancelled() {
            break;
        }
        if index >= *target.borrow_and_update() {
            if !parked {
                parked = true;
                recorder.active_users.fetch_sub(1, Ordering::Relaxed);
            }
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                changed = target.changed() => if changed.is_err() { break },
            }
            continue;
        }
        if parked {
            parked = false;
            recorder.active_users.fetch_add(1, Ordering::Relaxed);
            // Arrive at a random moment of one think time.
            let stagger = random_up_to(config.think + config.think_jitter);
            if pause(&shared.stop, stagger).await.is_err() {
                break;
            }
            outcome.turns.arrived(recorder.elapsed());
        }
        k += 1;
        match turn(&shared, &mut outcome, k).await {
            TurnEnd::Done => {}
            TurnEnd::Abandoned => break,
            TurnEnd::Lost => {
                outcome.unreliable = true;
                break;
            }
        }
        if config.max_turns.is_some_and(|max| k >= max) {
            break;
        }
        if pause(&shared.stop, think_time(config)).await.is_err() {
            break;
        }
    }
    if !parked {
        recorder.active_users.fetch_sub(1, Ordering::Relaxed);
    }
    if outcome.turns.active {
        recorder.record_user(outcome.turns.fairness);
    }
    outcome
}

/// Turn `k` of a user: submit (through 429s), long-poll, check.
async fn turn(shared: &Shared, outcome: &mut UserOutcome, k: u64) -> TurnEnd {
    let config = &shared.config;
    let recorder = &shared.recorder;
    let counters = &recorder.counters;
    let message = check::turn_message(&outcome.user_id, k);
    let idempotency_key = format!("{}:{k}", outcome.user_id);

    let mut submit_errors = 0;
    // The first 429 of this turn, since the start of the run.
    let mut refused_since = None;
    let (job_id, accepted_at) = loop {
        if shared.hard.is_cancelled() {
            if refused_since.is_some() {
                outcome.turns.cut(recorder.elapsed(), refused_since);
            }
            Counters::add(&counters.abandoned);
            return TurnEnd::Abandoned;
        }
        let sent = Instant::now();
        match shared
            .client
            .submit_turn(
                &outcome.user_id,
                &message,
                &idempotency_key,
                config.priority,
                config.stream,
            )
            .await
        {
            Submitted::Accepted {
                job_id,
                conversation_id,
            } => {
                recorder.record_submit(sent.elapsed());
                Counters::add(&counters.submitted);
                outcome.turns.accepted(recorder.elapsed(), refused_since);
                match (&outcome.conversation_id, conversation_id) {
                    (None, Some(c)) => outcome.conversation_id = Some(c),
                    (Some(mine), Some(c)) if *mine != c => {
                        // The default conversation of a user never changes.
                        recorder.record_error("submit: conversation changed");
                        recorder.example(format!(
                            "{}: turn {k} went to conversation {c}, not {mine}",
                            outcome.user_id
                        ));
                        outcome.unreliable = true;
                    }
                    _ => {}
                }
                break (job_id, sent);
            }
            Submitted::Rejected { retry_after } => {
                recorder.record_rejected(sent.elapsed());
                refused_since.get_or_insert(recorder.elapsed());
                let extra = random_up_to(retry_after / 10);
                if pause(&shared.stop, retry_after + extra).await.is_err() {
                    // Still waiting for a turn when the run ended.
                    outcome.turns.cut(recorder.elapsed(), refused_since);
                    Counters::add(&counters.abandoned);
                    return TurnEnd::Abandoned;
                }
            }
            Submitted::Failed(kind) => {
                recorder.record_error(&kind);
                submit_errors += 1;
                if submit_errors >= MAX_SUBMIT_ERRORS {
                    Counters::add(&counters.lost);
                    recorder.example(format!(
                        "{}: turn {k} could not be submitted ({kind})",
                        outcome.user_id
                    ));
                    return TurnEnd::Lost;
                }
                if pause(&shared.hard, ERROR_BACKOFF).await.is_err() {
                    Counters::add(&counters.abandoned);
                    return TurnEnd::Abandoned;
                }
            }
        }
    };

    let deadline = accepted_at + config.turn_timeout;
    let (job, finished_at, stream) = if config.stream {
        match follow_stream(shared, &outcome.user_id, k, &job_id, deadline).await {
            Ok((job, at, stream)) => (job, at, Some(stream)),
            Err(end) => return end,
        }
    } else {
        match long_poll(shared, &outcome.user_id, k, &job_id, deadline).await {
            Ok(job) => (job, Instant::now(), None),
            Err(end) => return end,
        }
    };
    let stream_broken = stream
        .as_ref()
        .is_some_and(|s| record_stream(shared, &outcome.user_id, k, &job_id, accepted_at, s, &job));
    match job.status.as_str() {
        "completed" => {
            recorder.record_end_to_end(finished_at.saturating_duration_since(accepted_at));
            Counters::add(&counters.completed);
            let before = outcome.completed.len() as u64;
            let reply = job.response.as_deref().unwrap_or("");
            let reply_wrong = match check_reply(before, &message, reply) {
                Ok(()) => false,
                Err(mismatch) => {
                    recorder.example(format!("{}: turn {k}: {mismatch}", outcome.user_id));
                    true
                }
            };
            // One turn counts once, however many checks it failed.
            if reply_wrong || stream_broken {
                Counters::add(&counters.mismatches);
                outcome.unreliable = true;
            }
            outcome.completed.push(message);
            TurnEnd::Done
        }
        "failed" => {
            Counters::add(&counters.failed);
            if stream_broken {
                Counters::add(&counters.mismatches);
            }
            recorder.example(format!(
                "{}: turn {k} (job {job_id}) failed: {}",
                outcome.user_id,
                job.error.as_deref().unwrap_or("no error given")
            ));
            TurnEnd::Done
        }
        other => {
            Counters::add(&counters.unexpected_status);
            if stream_broken {
                Counters::add(&counters.mismatches);
            }
            recorder.example(format!(
                "{}: turn {k} (job {job_id}) ended {other:?}",
                outcome.user_id
            ));
            TurnEnd::Done
        }
    }
}

/// Long-polls a turn's job until it is finished; `Err`: the turn is lost
/// (turn timeout, or the drain ended).
async fn long_poll(
    shared: &Shared,
    user_id: &str,
    k: u64,
    job_id: &str,
    deadline: Instant,
) -> Result<JobStatus, TurnEnd> {
    let config = &shared.config;
    let recorder = &shared.recorder;
    let counters = &recorder.counters;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(shared, user_id, k, job_id));
        }
        // Whole seconds: the API's long-poll takes at most 60.
        let wait = config
            .wait
            .min(remaining)
            .max(Duration::from_secs(1))
            .as_secs()
            .max(1);
        let polled = tokio::select! {
            polled = shared.client.poll(job_id, Duration::from_secs(wait)) => polled,
            _ = shared.hard.cancelled() => return Err(cut_by_drain(shared, user_id, k, job_id)),
        };
        match polled {
            Ok(job) if job.is_finished() => return Ok(job),
            Ok(_) => continue,
            Err(kind) => {
                recorder.record_error(&kind);
                if pause(&shared.hard, ERROR_BACKOFF).await.is_err() {
                    Counters::add(&counters.lost);
                    return Err(TurnEnd::Lost);
                }
            }
        }
    }
}

/// Follows a turn over `GET /v1/chat/{id}/stream` until its final event,
/// reconnecting with `Last-Event-ID` whenever a connection ends (or
/// breaks, or sends nothing for [`STREAM_IDLE`]) without it. Returns the
/// finished job, when its final event arrived, and the stream's record;
/// `Err`: the turn is lost (turn timeout, or the drain ended).
///
/// After the final event the connection is read to its end (at most
/// [`AFTER_FINAL`]), so that an event after the final one is seen. A
/// connection that ended without a single event is reopened after
/// [`ERROR_BACKOFF`], any other at once.
async fn follow_stream(
    shared: &Shared,
    user_id: &str,
    k: u64,
    job_id: &str,
    deadline: Instant,
) -> Result<(JobStatus, Instant, TurnStream), TurnEnd> {
    let recorder = &shared.recorder;
    let counters = &recorder.counters;
    let mut stream = TurnStream::new();
    let mut connections = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(shared, user_id, k, job_id));
        }
        connections += 1;
        Counters::add(&counters.stream_connections);
        if connections > 1 {
            Counters::add(&counters.reconnects);
        }
        let opened = tokio::select! {
            opened = tokio::time::timeout(
                remaining.min(STREAM_CONNECT_TIMEOUT),
                shared.client.stream(job_id, stream.resume_id(), STREAM_IDLE),
            ) => opened.unwrap_or_else(|_| Err("stream: timeout".to_owned())),
            _ = shared.hard.cancelled() => return Err(cut_by_drain(shared, user_id, k, job_id)),
        };
        let mut events = match opened {
            Ok(events) => events,
            Err(kind) => {
                recorder.record_error(&kind);
                if pause(&shared.hard, ERROR_BACKOFF).await.is_err() {
                    Counters::add(&counters.lost);
                    return Err(TurnEnd::Lost);
                }
                continue;
            }
        };
        let mut received = 0u64;
        loop {
            let finished = stream.final_event().is_some();
            let wait = if finished {
                AFTER_FINAL
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let next = tokio::select! {
                next = tokio::time::timeout(wait, events.next()) => next,
                _ = shared.hard.cancelled(), if !finished => {
                    return Err(cut_by_drain(shared, user_id, k, job_id));
                }
            };
            match next {
                Ok(Some(Ok(event))) => {
                    received += 1;
                    stream.on_event(&event, Instant::now(), chrono::Utc::now());
                }
                // The connection ended (cleanly or not) after the final
                // event: the turn is over.
                Ok(None) | Ok(Some(Err(_))) if finished => break,
                Err(_) if finished => {
                    recorder.record_error("stream: open after the final event");
                    break;
                }
                // Ended without the final event: reconnect.
                Ok(None) => break,
                Ok(Some(Err(kind))) => {
                    recorder.record_error(&kind);
                    break;
                }
                Err(_) => return Err(timed_out(shared, user_id, k, job_id)),
            }
        }
        if let Some(end) = stream.final_event() {
            let (job, at) = (end.job.clone(), end.at);
            return Ok((job, at, stream));
        }
        // A connection that ended with nothing at all: do not hammer.
        if received == 0 && pause(&shared.hard, ERROR_BACKOFF).await.is_err() {
            return Err(cut_by_drain(shared, user_id, k, job_id));
        }
    }
}

/// Counts a stream's numbers and checks it; true when it broke the
/// contract (the reason is kept as an example).
fn record_stream(
    shared: &Shared,
    user_id: &str,
    k: u64,
    job_id: &str,
    accepted_at: Instant,
    stream: &TurnStream,
    job: &JobStatus,
) -> bool {
    let config = &shared.config;
    let recorder = &shared.recorder;
    let counters = &recorder.counters;
    Counters::add(&counters.streams);
    Counters::add_n(&counters.deltas, stream.deltas);
    Counters::add_n(&counters.restarted_events, stream.restarted);
    if let Some(first) = stream.first_delta {
        recorder.record_first_delta(first.saturating_duration_since(accepted_at));
    }
    recorder.record_delta_gaps(&stream.gaps_us);
    // The overhead needs the attempt's start: the job view's `started_at`
    // is its first attempt's, so only one-attempt turns are measured.
    if let (Some(latency), Some((_, wall)), Some(started), Some(1)) = (
        config.expected_latency,
        stream.attempt_first_delta,
        job.started_at,
        job.attempts,
    ) {
        let chunks = config
            .expected_chunks
            .map_or(stream.attempt_deltas(), u64::from)
            .max(1);
        let first_chunk = latency / chunks as u32;
        let due = started + chrono::Duration::from_std(first_chunk).unwrap_or_default();
        // Early (clock granularity, or fewer chunks than assumed) is 0.
        let overhead = (wall - due).to_std().unwrap_or_default();
        recorder.record_first_delta_overhead(overhead);
    }
    let mut problems = stream.violations.clone();
    if stream.violation_count > problems.len() as u64 {
        problems.push(format!(
            "{} more",
            stream.violation_count - problems.len() as u64
        ));
    }
    problems.extend(stream.text_mismatch());
    if problems.is_empty() {
        return false;
    }
    Counters::add(&counters.stream_mismatches);
    recorder.example(format!(
        "{user_id}: turn {k} (job {job_id}) stream: {}",
        problems.join("; ")
    ));
    true
}

fn timed_out(shared: &Shared, user_id: &str, k: u64, job_id: &str) -> TurnEnd {
    Counters::add(&shared.recorder.counters.lost);
    shared.recorder.example(format!(
        "{user_id}: turn {k} (job {job_id}) not finished after {}",
        format_duration(shared.config.turn_timeout)
    ));
    TurnEnd::Lost
}

fn cut_by_drain(shared: &Shared, user_id: &str, k: u64, job_id: &str) -> TurnEnd {
    Counters::add(&shared.recorder.counters.lost);
    shared.recorder.example(format!(
        "{user_id}: turn {k} (job {job_id}) still running when the drain ended"
    ));
    TurnEnd::Lost
}

/// Sleeps `d`, or returns `Err` as soon as `token` is cancelled.
async fn pause(token: &CancellationToken, d: Duration) -> Result<(), ()> {
    if d.is_zero() {
        return if token.is_cancelled() {
            Err(())
        } else {
            Ok(())
        };
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = token.cancelled() => Err(()),
    }
}

fn random_up_to(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..d.as_secs_f64()))
}

/// `think ± jitter`, uniform, never negative.
fn think_time(config: &RunConfig) -> Duration {
    let (think, jitter) = (
        config.think.as_secs_f64(),
        config.think_jitter.as_secs_f64(),
    );
    if jitter == 0.0 {
        return config.think;
    }
    let t = rand::thread_rng().gen_range((think - jitter)..=(think + jitter));
    Duration::from_secs_f64(t.max(0.0))
}

/// Reads `GET /v1/queue` once a second until the run ends.
async fn sampler(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let t = shared.recorder.elapsed().as_secs_f64();
        let queue = tokio::select! {
            queue = shared.client.queue() => queue,
            _ = stop.cancelled() => return,
        };
        match queue {
            Ok(q) => shared.recorder.record_queue(QueueSample {
                t,
                total: q.total,
                processing: q.processing,
                oldest_queued_age_seconds: q.oldest_queued_age_seconds,
                users: shared.recorder.target_users.load(Ordering::Relaxed),
                load1: load_average().map(|l| l[0]),
            }),
            Err(kind) => shared.recorder.record_error(&kind),
        }
    }
}

/// The live progress line: redrawn in place on a terminal, a plain line at
/// most every `every` otherwise.
async fn progress(shared: Arc<Shared>, stop: CancellationToken) {
    let ProgressMode::Auto { every } = shared.config.progress else {
        return;
    };
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal { REDRAW_EVERY } else { every };
    if period.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let line = progress_line(&shared);
        let mut err = std::io::stderr().lock();
        if terminal {
            // Carriage return and clear-to-end-of-line: redraw in place.
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

fn progress_line(shared: &Shared) -> String {
    let r = &shared.recorder;
    let c = &r.counters;
    let queue = r
        .last_queue_sample()
        .map(|q| format!("{} (+{} running)", q.total, q.processing))
        .unwrap_or_else(|| "?".to_owned());
    let p95 = r.recent_end_to_end(RECENT);
    let p95 = if p95.count == 0 {
        "-".to_owned()
    } else {
        format!("{:.0} ms", p95.p95_ms)
    };
    let problems = Counters::get(&c.mismatches)
        + Counters::get(&c.failed)
        + Counters::get(&c.lost)
        + Counters::get(&c.unexpected_status);
    format!(
        "[{:>6.1}s] users {} | submitted {} | completed {} | in queue {} | 429s {} | errors {} | integrity {} | p95 {}",
        r.elapsed().as_secs_f64(),
        r.active_users.load(Ordering::Relaxed).max(0),
        Counters::get(&c.submitted),
        Counters::get(&c.completed),
        queue,
        Counters::get(&c.rejected),
        Counters::get(&c.errors),
        problems,
        p95,
    )
}

/// The soak's interim reports: every `every`, the last interval's numbers
/// on stdout.
async fn interim_reports(
    shared: Arc<Shared>,
    every: Duration,
    out: Arc<Mutex<Vec<IntervalReport>>>,
    stop: CancellationToken,
) {
    let mut next = every;
    loop {
        let at = shared.recorder.start() + next;
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = stop.cancelled() => return,
        }
        let interval = report::interval(&shared.recorder, next - every, next);
        println!("{}", interval.line());
        out.lock().unwrap_or_else(|e| e.into_inner()).push(interval);
        next += every;
    }
}

/// Fetches every reliable user's conversation and compares it with the
/// turns that completed. Returns (checked, problems found).
async fn verify_transcripts(shared: &Arc<Shared>, outcomes: &[UserOutcome]) -> (u64, u64) {
    if !shared.config.verify_transcripts {
        return (0, 0);
    }
    let limit = Arc::new(Semaphore::new(TRANSCRIPT_FETCHES));
    let mut checks = JoinSet::new();
    for outcome in outcomes.iter().filter(|o| !o.unreliable) {
        let Some(conversation) = outcome.conversation_id.clone() else {
            continue;
        };
        let (shared, limit) = (shared.clone(), limit.clone());
        let (user, completed) = (outcome.user_id.clone(), outcome.completed.clone());
        checks.spawn(async move {
            // The semaphore is never closed.
            let _permit = limit.acquire().await.expect("semaphore open");
            match shared.client.messages(&conversation).await {
                Ok(stored) => check_transcript(&completed, &stored).map(|problem| {
                    shared
                        .recorder
                        .example(format!("{user}: conversation {conversation}: {problem}"));
                }),
                Err(kind) => {
                    shared.recorder.record_error(&kind);
                    None
                }
            }
            .is_some()
        });
    }
    let (mut checked, mut problems) = (0, 0);
    while let Some(result) = checks.join_next().await {
        checked += 1;
        // The check itself does not panic.
        if result.expect("transcript check panicked") {
            problems += 1;
        }
    }
    (checked, problems)
}
