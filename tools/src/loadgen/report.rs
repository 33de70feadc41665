//! The report of a run: built from the recorder once the run is over,
//! written as `report.json`, `summary.txt` (the same text as on stdout) and
//! `chart.svg` into the report directory.
//!
//! # `report.json`
//! - `scenario`, `run_id`, `started_at`, `profile` (kind and its numbers,
//!   durations in seconds), `settings` (think time, jitter, wait, timeouts,
//!   expected latency, turns per user, base URL: never the key).
//! - `duration_s` (the profile's time), `drain_s` (turns in flight
//!   finishing after it).
//! - `counts`: `submitted`, `completed`, `failed`, `mismatches`, `lost`,
//!   `unexpected_status`, `errors`, `rejected_429`, `abandoned`,
//!   `transcripts_checked`, `transcript_problems`.
//! - `throughput_turns_per_s`: turns completed during the profile's time,
//!   per second.
//! - `latency_ms`: `end_to_end` (accepted POST sent → finished job
//!   received), `submit` (accepted POSTs' round trip), `rejected_429` (the
//!   429s' round trip); each `{count, mean_ms, p50_ms, p95_ms, p99_ms,
//!   max_ms}`.
//! - `errors_by_kind` (`submit: HTTP 503`, `poll: timeout`, …) and
//!   `problems`: the first 20 integrity problems and failures, word for word.
//! - `phases`: per profile phase (`steady`, `ramp`, `before`/`spike`/`after`,
//!   `soak`): `from_s`, `to_s`, `users`, `completed`, `throughput_turns_per_s`,
//!   `settled_throughput_turns_per_s` (after the first think + latency
//!   seconds, once the new users have arrived), `expected_turns_per_s`
//!   (users / (latency + think), when the latency is known), `end_to_end`,
//!   `rejected_429`.
//! - `intervals` (soak): the same numbers per `report_every`.
//! - `drift` (soak): `window_s`, `first` and `last` windows
//!   (`throughput_turns_per_s`, `end_to_end`), `throughput_drift_pct` and
//!   `p95_drift_pct` (last relative to first).
//! - `timeline`: one point a second: `t`, `users`, `completed`,
//!   `throughput_turns_per_s` (5 s moving average), `rejected_429`,
//!   `p95_ms` (completions of the last 5 s), `queue_total`, `processing`,
//!   `load1`.
//! - `queue`: the raw `GET /v1/queue` samples, one a second.
//! - `load_average`: `start` and `end`, `[1, 5, 15]` minutes.
//! - `client_cpu`: the load generator's own user + system CPU time over the
//!   run and drain (`cpu_s`), per finished turn (`per_turn_ms`: completed,
//!   failed or unexpected), and as a share of one core (`one_core_pct`): a
//!   generator near 100% × its cores measures itself, not the server.
//! - `stream` (`--stream` runs): `streams` (turns followed to their final
//!   event), `connections`, `reconnects`, `restarted_events`, `deltas`,
//!   `mismatches` (turns whose stream broke the contract; also counted in
//!   `counts.mismatches`), `first_delta` (accepted POST sent → first delta
//!   of the turn received), `first_delta_overhead` (first delta of a
//!   one-attempt turn received → the job's `started_at` plus the simulated
//!   provider's first-chunk time, latency / chunks: what the queue, the
//!   history load, publishing and delivery add; needs the latency, see
//!   `chunks_basis`), `delta_gap` (between consecutive deltas of an
//!   attempt, reconnects included).
//! - `fairness`: how the users fared against admission control: `users`
//!   (users that were active), `never_served` (active users with no turn
//!   accepted), `fewest_turns` (of one user), `max_gap_s` (the longest
//!   time a user went without a turn accepted while active: arrival to
//!   first turn, between two accepted turns, and last turn to the end of
//!   the run for a user still waiting out a 429 then; time parked by the
//!   profile does not count), `users_gap_over_60s`, `longest_refused_s`
//!   (the longest a turn spent in 429s before it was accepted or the run
//!   ended).
//! - `passed` and `failures`: a run passes when something completed and
//!   there were no mismatches, failed, lost or unexpected turns, request
//!   errors or transcript problems. 429s do not fail a run.

use super::profile::format_duration;
use super::stats::{
    in_window, summarize, summarize_window, Counters, LatencySummary, QueueSample, Recorder,
    Sample, UserFairness,
};
use super::{LoadgenError, RunConfig};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Width of the timeline's moving windows (throughput and p95).
const TIMELINE_WINDOW_S: usize = 5;

/// What [`build`] needs.
pub struct Inputs<'a> {
    pub config: &'a RunConfig,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub recorder: &'a Recorder,
    pub run_time: Duration,
    pub drain_time: Duration,
    pub intervals: Vec<IntervalReport>,
    /// (conversations checked, conversations with a problem).
    pub transcripts: (u64, u64),
    pub load_start: Option<[f64; 3]>,
    pub load_end: Option<[f64; 3]>,
    /// The generator's CPU time over the run and drain.
    pub cpu: Option<Duration>,
}

/// A finished run. See the module documentation for the fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub profile: Value,
    /// The profile in words.
    pub profile_description: String,
    pub settings: Settings,
    pub duration_s: f64,
    pub drain_s: f64,
    pub counts: Counts,
    pub throughput_turns_per_s: f64,
    pub latency_ms: Latencies,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub problems: Vec<String>,
    pub phases: Vec<PhaseReport>,
    pub intervals: Vec<IntervalReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    pub timeline: Vec<TimelinePoint>,
    pub queue: Vec<QueueSample>,
    pub load_average: LoadAverage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cpu: Option<ClientCpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamReport>,
    #[serde(default)]
    pub fairness: Fairness,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// How the users fared against admission control (see the module
/// documentation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    pub users: u64,
    pub never_served: u64,
    pub fewest_turns: u64,
    pub max_gap_s: f64,
    pub users_gap_over_60s: u64,
    pub longest_refused_s: f64,
}

impl Fairness {
    /// Sums up the users' records.
    pub fn of(users: &[UserFairness]) -> Fairness {
        let minute = Duration::from_secs(60);
        Fairness {
            users: users.len() as u64,
            never_served: users.iter().filter(|u| u.served == 0).count() as u64,
            fewest_turns: users.iter().map(|u| u.served).min().unwrap_or(0),
            max_gap_s: users
                .iter()
                .map(|u| u.max_gap.as_secs_f64())
                .fold(0.0, f64::max),
            users_gap_over_60s: users.iter().filter(|u| u.max_gap > minute).count() as u64,
            longest_refused_s: users
                .iter()
                .map(|u| u.longest_refused.as_secs_f64())
                .fold(0.0, f64::max),
        }
    }
}

/// The load generator's own CPU time (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientCpu {
    pub cpu_s: f64,
    pub turns: u64,
    pub per_turn_ms: f64,
    pub one_core_pct: f64,
}

/// `--stream`'s numbers (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamReport {
    pub streams: u64,
    pub connections: u64,
    pub reconnects: u64,
    pub restarted_events: u64,
    pub deltas: u64,
    pub mismatches: u64,
    pub first_delta: LatencySummary,
    /// The simulated provider's first-chunk time (latency / chunks), when
    /// the chunk count was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<f64>,
    /// Where the chunk count came from: `--expected-chunks N`, or each
    /// turn's own delta count (exact when the server publishes one delta
    /// per provider chunk).
    pub chunks_basis: String,
    /// `None` without the simulated latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_delta_overhead: Option<LatencySummary>,
    pub delta_gap: LatencySummary,
}

/// The run's settings, as far as they shape the numbers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub base_url: String,
    pub users_max: usize,
    pub think_ms: u64,
    pub think_jitter_ms: u64,
    pub wait_s: u64,
    pub turn_timeout_s: f64,
    pub drain_timeout_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns_per_user: Option<u64>,
    pub priority: u8,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub mismatches: u64,
    pub lost: u64,
    pub unexpected_status: u64,
    pub errors: u64,
    pub rejected_429: u64,
    pub abandoned: u64,
    pub transcripts_checked: u64,
    pub transcript_problems: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latencies {
    pub end_to_end: LatencySummary,
    pub submit: LatencySummary,
    pub rejected_429: LatencySummary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub from_s: f64,
    pub to_s: f64,
    pub users: usize,
    pub completed: u64,
    pub throughput_turns_per_s: f64,
    pub settled_throughput_turns_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_turns_per_s: Option<f64>,
    pub end_to_end: LatencySummary,
    pub rejected_429: u64,
}

/// One stretch of a run: a soak's interim report, or a drift window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntervalReport {
    pub from_s: f64,
    pub to_s: f64,
    pub completed: u64,
    pub throughput_turns_per_s: f64,
    pub end_to_end: LatencySummary,
    pub rejected_429: u64,
    pub errors: u64,
}

impl IntervalReport {
    /// `[soak 5 min – 10 min] 50.1 turns/s, end-to-end p50 … p95 … p99 …`.
    pub fn line(&self) -> String {
        let d = |s: f64| format_duration(Duration::from_secs_f64(s));
        format!(
            "[{} – {}] {} turns, {:.1} turns/s, end-to-end p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms, 429s {}, errors so far {}",
            d(self.from_s),
            d(self.to_s),
            self.completed,
            self.throughput_turns_per_s,
            self.end_to_end.p50_ms,
            self.end_to_end.p95_ms,
            self.end_to_end.p99_ms,
            self.end_to_end.max_ms,
            self.rejected_429,
            self.errors,
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drift {
    pub window_s: f64,
    pub first: IntervalReport,
    pub last: IntervalReport,
    /// `(last - first) / first`, in percent.
    pub throughput_drift_pct: f64,
    pub p95_drift_pct: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub users: usize,
    pub completed: u64,
    pub throughput_turns_per_s: f64,
    pub rejected_429: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadAverage {
    pub start: Option<[f64; 3]>,
    pub end: Option<[f64; 3]>,
}

/// The numbers of `[from, to)` (seconds since the start).
pub fn interval(recorder: &Recorder, from: Duration, to: Duration) -> IntervalReport {
    let e2e = recorder.end_to_end();
    let rejected = recorder.rejections();
    interval_of(
        &e2e,
        &rejected,
        from,
        to,
        Counters::get(&recorder.counters.errors),
    )
}

fn interval_of(
    e2e: &[Sample],
    rejected: &[Sample],
    from: Duration,
    to: Duration,
    errors: u64,
) -> IntervalReport {
    let end_to_end = summarize_window(e2e, from, to);
    let secs = (to - from).as_secs_f64();
    IntervalReport {
        from_s: from.as_secs_f64(),
        to_s: to.as_secs_f64(),
        completed: end_to_end.count,
        throughput_turns_per_s: if secs > 0.0 {
            end_to_end.count as f64 / secs
        } else {
            0.0
        },
        end_to_end,
        rejected_429: in_window(rejected, from, to).count() as u64,
        errors,
    }
}

fn percent_change(first: f64, last: f64) -> f64 {
    if first == 0.0 {
        0.0
    } else {
        (last - first) / first * 100.0
    }
}

/// Builds the report of a finished run.
pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        config,
        run_id,
        started_at,
        recorder,
        run_time,
        drain_time,
        intervals,
        transcripts,
        load_start,
        load_end,
        cpu,
    } = inputs;
    let c = &recorder.counters;
    let counts = Counts {
        submitted: Counters::get(&c.submitted),
        completed: Counters::get(&c.completed),
        failed: Counters::get(&c.failed),
        mismatches: Counters::get(&c.mismatches),
        lost: Counters::get(&c.lost),
        unexpected_status: Counters::get(&c.unexpected_status),
        errors: Counters::get(&c.errors),
        rejected_429: Counters::get(&c.rejected),
        abandoned: Counters::get(&c.abandoned),
        transcripts_checked: transcripts.0,
        transcript_problems: transcripts.1,
    };
    let e2e = recorder.end_to_end();
    let submits = recorder.submits();
    let rejected = recorder.rejections();
    let queue = recorder.queue_samples();
    let profile = &config.profile;

    let in_run = in_window(&e2e, Duration::ZERO, run_time).count() as f64;
    let throughput = if run_time.is_zero() {
        0.0
    } else {
        in_run / run_time.as_secs_f64()
    };

    let think = config.think.as_secs_f64();
    let phases = profile
        .phases()
        .into_iter()
        .filter(|p| p.from < run_time)
        .map(|p| {
            let to = p.to.min(run_time);
            let i = interval_of(&e2e, &rejected, p.from, to, 0);
            let settle = Duration::from_secs_f64(
                think + config.expected_latency.map_or(0.0, |l| l.as_secs_f64()),
            )
            .min((to - p.from) / 2);
            let settled = interval_of(&e2e, &rejected, p.from + settle, to, 0);
            PhaseReport {
                name: p.name.to_owned(),
                from_s: p.from.as_secs_f64(),
                to_s: to.as_secs_f64(),
                users: p.users,
                completed: i.completed,
                throughput_turns_per_s: i.throughput_turns_per_s,
                settled_throughput_turns_per_s: settled.throughput_turns_per_s,
                expected_turns_per_s: config
                    .expected_latency
                    .map(|l| p.users as f64 / (l.as_secs_f64() + think)),
                end_to_end: i.end_to_end,
                rejected_429: i.rejected_429,
            }
        })
        .collect();

    let drift = profile.report_every().and_then(|_| {
        let window = if run_time >= config.drift_window * 2 {
            config.drift_window
        } else {
            run_time / 3
        };
        if window.is_zero() {
            return None;
        }
        let first = interval_of(&e2e, &rejected, Duration::ZERO, window, 0);
        let last = interval_of(&e2e, &rejected, run_time - window, run_time, 0);
        Some(Drift {
            window_s: window.as_secs_f64(),
            throughput_drift_pct: percent_change(
                first.throughput_turns_per_s,
                last.throughput_turns_per_s,
            ),
            p95_drift_pct: percent_change(first.end_to_end.p95_ms, last.end_to_end.p95_ms),
            first,
            last,
        })
    });

    let timeline = timeline(config, &e2e, &rejected, &queue, run_time + drain_time);

    let mut failures = Vec::new();
    let mut fail = |n: u64, what: &str| {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    };
    fail(counts.mismatches, "integrity mismatches");
    fail(counts.failed, "failed jobs");
    fail(counts.lost, "lost turns");
    fail(counts.unexpected_status, "turns with an unexpected status");
    fail(counts.errors, "request errors");
    fail(
        counts.transcript_problems,
        "conversations with transcript problems",
    );
    if counts.completed == 0 {
        failures.push("no turn completed".to_owned());
    }

    Report {
        scenario: config.scenario.clone(),
        run_id,
        started_at,
        profile: profile.to_json(),
        profile_description: profile.describe(),
        settings: Settings {
            base_url: config.base_url.clone(),
            users_max: profile.max_users(),
            think_ms: config.think.as_millis() as u64,
            think_jitter_ms: config.think_jitter.as_millis() as u64,
            wait_s: config.wait.as_secs(),
            turn_timeout_s: config.turn_timeout.as_secs_f64(),
            drain_timeout_s: config.drain_timeout.as_secs_f64(),
            expected_latency_ms: config.expected_latency.map(|l| l.as_millis() as u64),
            max_turns_per_user: config.max_turns,
            priority: config.priority,
        },
        duration_s: run_time.as_secs_f64(),
        drain_s: drain_time.as_secs_f64(),
        throughput_turns_per_s: throughput,
        latency_ms: Latencies {
            end_to_end: summarize(e2e.iter().map(|s| s.latency_us)),
            submit: summarize(submits.iter().map(|s| s.latency_us)),
            rejected_429: summarize(rejected.iter().map(|s| s.latency_us)),
        },
        errors_by_kind: recorder.errors_by_kind(),
        problems: recorder.examples(),
        phases,
        intervals,
        drift,
        timeline,
        queue,
        load_average: LoadAverage {
            start: load_start,
            end: load_end,
        },
        client_cpu: cpu.map(|cpu| {
            let turns = counts.completed + counts.failed + counts.unexpected_status;
            let wall = (run_time + drain_time).as_secs_f64();
            ClientCpu {
                cpu_s: cpu.as_secs_f64(),
                turns,
                per_turn_ms: if turns == 0 {
                    0.0
                } else {
                    cpu.as_secs_f64() * 1000.0 / turns as f64
                },
                one_core_pct: if wall > 0.0 {
                    cpu.as_secs_f64() / wall * 100.0
                } else {
                    0.0
                },
            }
        }),
        stream: config.stream.then(|| stream_report(config, recorder)),
        fairness: Fairness::of(&recorder.users()),
        passed: failures.is_empty(),
        failures,
        counts,
    }
}

fn stream_report(config: &RunConfig, recorder: &Recorder) -> StreamReport {
    let c = &recorder.counters;
    StreamReport {
        streams: Counters::get(&c.streams),
        connections: Counters::get(&c.stream_connections),
        reconnects: Counters::get(&c.reconnects),
        restarted_events: Counters::get(&c.restarted_events),
        deltas: Counters::get(&c.deltas),
        mismatches: Counters::get(&c.stream_mismatches),
        first_delta: summarize(recorder.first_deltas().iter().map(|s| s.latency_us)),
        first_chunk_ms: config
            .expected_latency
            .zip(config.expected_chunks)
            .map(|(l, n)| l.as_secs_f64() * 1000.0 / f64::from(n)),
        chunks_basis: match config.expected_chunks {
            Some(n) => format!("--expected-chunks {n}"),
            None => "deltas of each turn's last attempt".to_owned(),
        },
        first_delta_overhead: config.expected_latency.map(|_| {
            summarize(
                recorder
                    .first_delta_overheads()
                    .iter()
                    .map(|s| s.latency_us),
            )
        }),
        delta_gap: recorder.delta_gaps(),
    }
}

/// One point a second over `span`.
fn timeline(
    config: &RunConfig,
    e2e: &[Sample],
    rejected: &[Sample],
    queue: &[QueueSample],
    span: Duration,
) -> Vec<TimelinePoint> {
    let seconds = span.as_secs_f64().ceil() as usize;
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for s in e2e {
        if let Some(b) = buckets.get_mut((s.at_ms / 1000) as usize) {
            b.push(s.latency_us);
        }
    }
    let mut rejections = vec![0u64; seconds];
    for s in rejected {
        if let Some(r) = rejections.get_mut((s.at_ms / 1000) as usize) {
            *r += 1;
        }
    }
    let mut by_second: Vec<Option<&QueueSample>> = vec![None; seconds];
    for q in queue {
        if let Some(slot) = by_second.get_mut(q.t as usize) {
            *slot = Some(q);
        }
    }
    let duration = config.profile.duration();
    (0..seconds)
        .map(|i| {
            let from = (i + 1).saturating_sub(TIMELINE_WINDOW_S);
            let window = &buckets[from..=i];
            let recent = summarize(window.iter().flatten().copied());
            let width = (i + 1 - from) as f64;
            let t = Duration::from_secs(i as u64);
            TimelinePoint {
                t: i as f64,
                users: if t < duration {
                    config.profile.users_at(t)
                } else {
                    0
                },
                completed: buckets[i].len() as u64,
                throughput_turns_per_s: recent.count as f64 / width,
                rejected_429: rejections[i],
                p95_ms: (recent.count > 0).then_some(recent.p95_ms),
                queue_total: by_second[i].map(|q| q.total),
                processing: by_second[i].map(|q| q.processing),
                load1: by_second[i].and_then(|q| q.load1),
            }
        })
        .collect()
}

fn latency_row(name: &str, s: &LatencySummary) -> String {
    format!(
        "  {name:<14} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
        s.count, s.mean_ms, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
    )
}

impl Report {
    /// The human summary (also `summary.txt`).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.counts;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "skipjack loadgen · scenario {} · run {} · started {}",
            self.scenario,
            self.run_id,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        let _ = writeln!(out, "profile: {}", self.profile_description);
        let _ = writeln!(
            out,
            "ran {:.1} s (+ {:.1} s drain); think {} ms ± {} ms; long-poll wait {} s{}",
            self.duration_s,
            self.drain_s,
            s.think_ms,
            s.think_jitter_ms,
            s.wait_s,
            s.expected_latency_ms
                .map(|l| format!("; simulated LLM latency {l} ms"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "turns: {} submitted, {} completed, {} failed, {} lost, {} unexpected status, {} abandoned at the end",
            c.submitted, c.completed, c.failed, c.lost, c.unexpected_status, c.abandoned
        );
        let _ = writeln!(
            out,
            "integrity: {} mismatches; {} conversations checked, {} with problems",
            c.mismatches, c.transcripts_checked, c.transcript_problems
        );
        let _ = writeln!(out, "errors: {}   429s: {}", c.errors, c.rejected_429);
        let f = &self.fairness;
        let _ = writeln!(
            out,
            "fairness: {} users, {} never served; fewest turns of a user {}; max gap between a user's turns {:.1} s ({} users over 60 s); longest wait through 429s {:.1} s",
            f.users, f.never_served, f.fewest_turns, f.max_gap_s, f.users_gap_over_60s, f.longest_refused_s
        );
        for (kind, n) in &self.errors_by_kind {
            let _ = writeln!(out, "  {kind}: {n}");
        }
        let _ = writeln!(
            out,
            "throughput: {:.1} turns/s over the run",
            self.throughput_turns_per_s
        );
        let _ = writeln!(
            out,
            "latency (ms)       count      mean       p50       p95       p99       max"
        );
        out.push_str(&latency_row("end-to-end", &self.latency_ms.end_to_end));
        out.push_str(&latency_row("submit (202)", &self.latency_ms.submit));
        out.push_str(&latency_row("429", &self.latency_ms.rejected_429));
        let _ = writeln!(out, "phases:");
        for p in &self.phases {
            let _ = writeln!(
                out,
                "  {:<7} {:>6.0}–{:<6.0}s {:>5} users: {:>6} turns, {:.1} turns/s (settled {:.1}{}), end-to-end p50 {:.0} p95 {:.0} p99 {:.0} max {:.0} ms, 429s {}",
                p.name,
                p.from_s,
                p.to_s,
                p.users,
                p.completed,
                p.throughput_turns_per_s,
                p.settled_throughput_turns_per_s,
                p.expected_turns_per_s
                    .map(|e| format!(", expected {e:.1}"))
                    .unwrap_or_default(),
                p.end_to_end.p50_ms,
                p.end_to_end.p95_ms,
                p.end_to_end.p99_ms,
                p.end_to_end.max_ms,
                p.rejected_429,
            );
        }
        if let Some(d) = &self.drift {
            let _ = writeln!(
                out,
                "drift (first vs last {}): throughput {:.1} → {:.1} turns/s ({:+.1}%), p95 {:.0} → {:.0} ms ({:+.1}%)",
                format_duration(Duration::from_secs_f64(d.window_s)),
                d.first.throughput_turns_per_s,
                d.last.throughput_turns_per_s,
                d.throughput_drift_pct,
                d.first.end_to_end.p95_ms,
                d.last.end_to_end.p95_ms,
                d.p95_drift_pct
            );
        }
        if let Some(q) = self.queue.iter().max_by_key(|q| q.total) {
            let processing = self.queue.iter().map(|q| q.processing).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "queue: at most {} queued (at {:.0} s), at most {} processing; {} samples",
                q.total,
                q.t,
                processing,
                self.queue.len()
            );
        }
        let load = |l: &Option<[f64; 3]>| {
            l.map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                .unwrap_or_else(|| "?".to_owned())
        };
        let _ = writeln!(
            out,
            "load average (1/5/15 min): start {}, end {}",
            load(&self.load_average.start),
            load(&self.load_average.end)
        );
        if let Some(st) = &self.stream {
            let _ = writeln!(
                out,
                "stream: {} streams over {} connections ({} reconnects), {} deltas, {} restarted events, {} stream mismatches",
                st.streams, st.connections, st.reconnects, st.deltas, st.restarted_events, st.mismatches
            );
            let _ = writeln!(
                out,
                "stream (ms)        count      mean       p50       p95       p99       max"
            );
            out.push_str(&latency_row("first delta", &st.first_delta));
            match &st.first_delta_overhead {
                Some(o) => out.push_str(&latency_row("1st-delta ovh", o)),
                None => {
                    let _ = writeln!(
                        out,
                        "  1st-delta ovh  (needs the simulated latency: --expected-latency-ms)"
                    );
                }
            }
            out.push_str(&latency_row("delta gap", &st.delta_gap));
            let _ = writeln!(
                out,
                "  (first delta: from the accepted POST; overhead: after started_at + {}, one-attempt turns, chunks from {})",
                st.first_chunk_ms
                    .map(|ms| format!("{ms:.1} ms"))
                    .unwrap_or_else(|| "latency / chunks".to_owned()),
                st.chunks_basis
            );
        }
        if let Some(cpu) = &self.client_cpu {
            let _ = writeln!(
                out,
                "loadgen CPU: {:.1} s ({:.0}% of one core), {:.2} ms per finished turn ({} turns)",
                cpu.cpu_s, cpu.one_core_pct, cpu.per_turn_ms, cpu.turns
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        if self.passed {
            let _ = writeln!(out, "result: PASS");
        } else {
            let _ = writeln!(out, "result: FAIL ({})", self.failures.join(", "));
        }
        out
    }

    /// Reads the `report.json` of an earlier run (to redraw its chart).
    pub fn read(dir: &Path) -> Result<Report, LoadgenError> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("report.json"),
        )?)?)
    }

    /// Writes `report.json` and `summary.txt` into `dir` (created if
    /// needed); [`super::write_report`] adds the chart.
    pub fn write(&self, dir: &Path) -> Result<(), LoadgenError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("summary.txt"), self.summary())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_relative_to_the_first_window() {
        assert_eq!(percent_change(100.0, 110.0), 10.0);
        assert_eq!(percent_change(0.0, 5.0), 0.0);
    }
}
