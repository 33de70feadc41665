//! What a run records while it runs: counters, every latency sample (with
//! the moment it was taken), queue samples; and the percentile summaries
//! built from them with an HDR histogram.
//!
//! Every sample is kept (16 bytes each: a 30-minute soak at 100 turns/s is
//! about 3 MB) so that any window of the run (a phase, the first and last
//! five minutes, one second of the timeline) can be summarised exactly
//! after the fact, instead of fixing the windows in advance.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Highest latency the histograms track: an hour, in microseconds.
const MAX_TRACKED_US: u64 = 3_600_000_000;
/// Significant digits of the histograms: values within 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Integrity problems and failures kept word for word in the report.
const MAX_EXAMPLES: usize = 20;

/// One latency sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was taken (the reply arrived), since the start of the run.
    pub at_ms: u64,
    /// How long it took, in microseconds.
    pub latency_us: u64,
}

/// Count, mean, p50/p95/p99 and max of some latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Exact, not the histogram bucket's bound.
    pub max_ms: f64,
}

/// Summarises latencies given in microseconds. Percentiles come from an HDR
/// histogram (3 significant digits: within 0.1% of the exact value, never
/// below it); the max is exact.
pub fn summarize(latencies_us: impl IntoIterator<Item = u64>) -> LatencySummary {
    let mut d = Distribution::default();
    for us in latencies_us {
        d.record(us);
    }
    d.summary()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_DIGITS)
        // The bounds and digits are constants that hdrhistogram accepts.
        .expect("valid histogram bounds")
}

fn summary_of(histogram: &Histogram<u64>, max: u64) -> LatencySummary {
    if histogram.is_empty() {
        return LatencySummary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: histogram.len(),
        mean_ms: histogram.mean() / 1000.0,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p95_ms: ms(histogram.value_at_quantile(0.95)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(max),
    }
}

/// Summarises the samples taken in `[from, to)`.
pub fn summarize_window(samples: &[Sample], from: Duration, to: Duration) -> LatencySummary {
    summarize(in_window(samples, from, to).map(|s| s.latency_us))
}

/// The samples taken in `[from, to)`.
pub fn in_window(
    samples: &[Sample],
    from: Duration,
    to: Duration,
) -> impl Iterator<Item = &Sample> {
    let (from, to) = (from.as_millis() as u64, to.as_millis() as u64);
    samples
        .iter()
        .filter(move |s| s.at_ms >= from && s.at_ms < to)
}

/// One reading of `GET /v1/queue`, plus what the run looked like then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueSample {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Queued jobs (all tenants).
    pub total: i64,
    /// Jobs being processed.
    pub processing: i64,
    pub oldest_queued_age_seconds: f64,
    /// Users the profile asked for then.
    pub users: usize,
    /// The machine's 1-minute load average then (Linux), to tell a run
    /// skewed by other work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
}

/// How one user fared against admission control: what the report's
/// `fairness` section is built from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UserFairness {
    /// Turns of this user the API accepted.
    pub served: u64,
    /// Longest time the user went without a turn accepted while it was
    /// active: from its arrival to its first accepted turn, between two
    /// accepted turns, and from its last one (or its arrival) to the end of
    /// the run when it was still waiting out a 429 then.
    pub max_gap: Duration,
    /// Longest time one of its turns spent refused: from its first 429 to
    /// its acceptance (or to the end of the run).
    pub longest_refused: Duration,
}

/// The run's counters. Each turn ends in exactly one of completed, failed,
/// lost, unexpected status or abandoned (cut off before it was accepted).
#[derive(Debug, Default)]
pub struct Counters {
    /// Turns the API accepted (202); a turn retried after a 429 counts once.
    pub submitted: AtomicU64,
    /// Turns answered `completed` (whether the reply was right or not).
    pub completed: AtomicU64,
    /// Completed turns whose reply was wrong.
    pub mismatches: AtomicU64,
    /// Turns answered `failed`.
    pub failed: AtomicU64,
    /// Accepted turns that never finished (turn timeout, or still running
    /// when the drain ended), or that could not be submitted after retries.
    pub lost: AtomicU64,
    /// Turns that ended in a status other than completed or failed.
    pub unexpected_status: AtomicU64,
    /// Requests that failed: transport errors, 5xx, statuses other than the
    /// expected 202/200/429.
    pub errors: AtomicU64,
    /// 429 answers.
    pub rejected: AtomicU64,
    /// Turns cut off by the end of the run before they were accepted (in a
    /// 429 back-off): not an error.
    pub abandoned: AtomicU64,
    /// `--stream`: turns followed over `GET /v1/chat/{id}/stream` to their
    /// final event.
    pub streams: AtomicU64,
    /// `--stream`: connections opened (first ones and reconnects).
    pub stream_connections: AtomicU64,
    /// `--stream`: connections opened again for a turn whose stream ended
    /// (or broke) without the final event.
    pub reconnects: AtomicU64,
    /// `--stream`: `restarted` events received.
    pub restarted_events: AtomicU64,
    /// `--stream`: turns whose stream broke the contract (text not the
    /// response, ids out of order, a gap, an event after the final one);
    /// each also counts in `mismatches`.
    pub stream_mismatches: AtomicU64,
    /// `--stream`: `delta` events received.
    pub deltas: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An HDR histogram of microseconds and the exact maximum: for samples too
/// many to keep one by one (the gaps between deltas).
#[derive(Debug)]
pub struct Distribution {
    histogram: Histogram<u64>,
    max_us: u64,
}

impl Default for Distribution {
    fn default() -> Self {
        Distribution {
            histogram: new_histogram(),
            max_us: 0,
        }
    }
}

impl Distribution {
    pub fn record(&mut self, us: u64) {
        self.histogram.saturating_record(us.max(1));
        self.max_us = self.max_us.max(us);
    }

    pub fn summary(&self) -> LatencySummary {
        summary_of(&self.histogram, self.max_us)
    }
}

/// Everything a run records, shared by the users, the sampler and the
/// progress line.
#[derive(Debug)]
pub struct Recorder {
    /// The start of the run: every `at_ms` counts from here.
    start: Instant,
    pub counters: Counters,
    /// End-to-end latency of completed turns: from sending the POST that was
    /// accepted to receiving the finished job.
    end_to_end: Mutex<Vec<Sample>>,
    /// Round trip of accepted POSTs.
    submit: Mutex<Vec<Sample>>,
    /// Round trip of POSTs answered 429.
    rejected: Mutex<Vec<Sample>>,
    /// Readings of `GET /v1/queue`, one a second.
    queue: Mutex<Vec<QueueSample>>,
    /// `--stream`: accepted POST sent → first delta received.
    first_delta: Mutex<Vec<Sample>>,
    /// `--stream`: first delta of the last attempt received → its
    /// `started_at` plus the simulated provider's first-chunk time.
    first_delta_overhead: Mutex<Vec<Sample>>,
    /// `--stream`: time between consecutive deltas of an attempt.
    delta_gaps: Mutex<Distribution>,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    /// The first integrity problems and failures, word for word.
    examples: Mutex<Vec<String>>,
    /// Each user that was active, once it has stopped.
    users: Mutex<Vec<UserFairness>>,
    /// Users the profile asks for now.
    pub target_users: AtomicUsize,
    /// Users that are running turns or thinking (not parked) now.
    pub active_users: AtomicI64,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            counters: Counters::default(),
            end_to_end: Mutex::default(),
            submit: Mutex::default(),
            rejected: Mutex::default(),
            queue: Mutex::default(),
            first_delta: Mutex::default(),
            first_delta_overhead: Mutex::default(),
            delta_gaps: Mutex::default(),
            errors_by_kind: Mutex::default(),
            examples: Mutex::default(),
            users: Mutex::default(),
            target_users: AtomicUsize::new(0),
            active_users: AtomicI64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn sample(&self, latency: Duration) -> Sample {
        Sample {
            at_ms: self.start.elapsed().as_millis() as u64,
            latency_us: latency.as_micros() as u64,
        }
    }

    pub fn record_end_to_end(&self, latency: Duration) {
        let s = self.sample(latency);
        lock(&self.end_to_end).push(s);
    }

    pub fn record_submit(&self, latency: Duration) {
        let s = self.sample(latency);
        lock(&self.submit).push(s);
    }

    pub fn record_rejected(&self, latency: Duration) {
        Counters::add(&self.counters.rejected);
        let s = self.sample(latency);
        lock(&self.rejected).push(s);
    }

    pub fn record_first_delta(&self, latency: Duration) {
        let s = self.sample(latency);
        lock(&self.first_delta).push(s);
    }

    pub fn record_first_delta_overhead(&self, overhead: Duration) {
        let s = self.sample(overhead);
        lock(&self.first_delta_overhead).push(s);
    }

    pub fn record_delta_gaps(&self, gaps_us: &[u64]) {
        if gaps_us.is_empty() {
            return;
        }
        let mut d = lock(&self.delta_gaps);
        for &us in gaps_us {
            d.record(us);
        }
    }

    pub fn first_deltas(&self) -> Vec<Sample> {
        lock(&self.first_delta).clone()
    }

    pub fn first_delta_overheads(&self) -> Vec<Sample> {
        lock(&self.first_delta_overhead).clone()
    }

    pub fn delta_gaps(&self) -> LatencySummary {
        lock(&self.delta_gaps).summary()
    }

    pub fn record_queue(&self, sample: QueueSample) {
        lock(&self.queue).push(sample);
    }

    /// Counts a failed request under `kind` (e.g. `submit: HTTP 503`).
    pub fn record_error(&self, kind: &str) {
        Counters::add(&self.counters.errors);
        *lock(&self.errors_by_kind)
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Keeps `what` for the report, while fewer than 20 are kept.
    pub fn example(&self, what: String) {
        let mut examples = lock(&self.examples);
        if examples.len() < MAX_EXAMPLES {
            examples.push(what);
        }
    }

    pub fn end_to_end(&self) -> Vec<Sample> {
        lock(&self.end_to_end).clone()
    }

    pub fn submits(&self) -> Vec<Sample> {
        lock(&self.submit).clone()
    }

    pub fn rejections(&self) -> Vec<Sample> {
        lock(&self.rejected).clone()
    }

    pub fn queue_samples(&self) -> Vec<QueueSample> {
        lock(&self.queue).clone()
    }

    pub fn last_queue_sample(&self) -> Option<QueueSample> {
        lock(&self.queue).last().cloned()
    }

    pub fn errors_by_kind(&self) -> BTreeMap<String, u64> {
        lock(&self.errors_by_kind).clone()
    }

    /// Records how a user that was active fared.
    pub fn record_user(&self, user: UserFairness) {
        lock(&self.users).push(user);
    }

    pub fn users(&self) -> Vec<UserFairness> {
        lock(&self.users).clone()
    }

    pub fn examples(&self) -> Vec<String> {
        lock(&self.examples).clone()
    }

    /// End-to-end latencies of the turns that completed in the last
    /// `window`: the progress line's "current p95".
    pub fn recent_end_to_end(&self, window: Duration) -> LatencySummary {
        let now = self.start.elapsed().as_millis() as u64;
        let since = now.saturating_sub(window.as_millis() as u64);
        let samples = lock(&self.end_to_end);
        // Samples are appended in time order (nearly: a few may race), so
        // the recent ones are at the end.
        let recent = samples
            .iter()
            .rev()
            .take_while(|s| s.at_ms >= since)
            .map(|s| s.latency_us);
        summarize(recent)
    }
}

/// Every lock here guards plain data that stays valid if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// User + system CPU time this process has used so far, from
/// `/proc/self/stat` (Linux; `utime` and `stime` in clock ticks, taken as
/// the usual 100 a second). The resolution is 10 ms.
pub fn process_cpu_time() -> Option<Duration> {
    cpu_time_of_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` of a `/proc/PID/stat` line.
pub fn cpu_time_of_stat(stat: &str) -> Option<Duration> {
    // The command name may hold spaces and parentheses: fields are counted
    // after its last ')'. utime and stime are fields 14 and 15 (1-based);
    // the first after ')' is field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The 1-, 5- and 15-minute load averages (Linux `/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(summarize([]), LatencySummary::default());
    }

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        let stat =
            "4242 (load gen) (x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_time_of_stat(stat), Some(Duration::from_millis(2870)));
        assert!(process_cpu_time().is_some());
    }

    #[test]
    fn windows_select_by_time() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                at_ms: i * 1000,
                latency_us: (i + 1) * 1000,
            })
            .collect();
        let s = summarize_window(&samples, Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(s.count, 3);
        assert_eq!(s.max_ms, 5.0);
    }
}
