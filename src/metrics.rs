//! Prometheus metrics: every name is a constant here, and no label carries
//! an id (job, tenant, conversation), so the series count stays bounded.
//!
//! One process-wide registry; `/metrics` renders it with [`render`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub const JOBS_ENQUEUED_TOTAL: &str = "skipjack_jobs_enqueued_total";
pub const JOBS_CLAIMED_TOTAL: &str = "skipjack_jobs_claimed_total";
pub const JOBS_FINISHED_TOTAL: &str = "skipjack_jobs_finished_total";
pub const JOBS_RETRIED_TOTAL: &str = "skipjack_jobs_retried_total";
pub const JOBS_RESCUED_TOTAL: &str = "skipjack_jobs_rescued_total";
pub const JOBS_LEASE_LOST_TOTAL: &str = "skipjack_jobs_lease_lost_total";
pub const JOB_WAIT_SECONDS: &str = "skipjack_job_wait_seconds";
pub const JOB_RUN_SECONDS: &str = "skipjack_job_run_seconds";
pub const WORKER_SLOTS_BUSY: &str = "skipjack_worker_slots_busy";
pub const WORKER_SLOTS_TOTAL: &str = "skipjack_worker_slots_total";
pub const LISTENER_RECONNECTS_TOTAL: &str = "skipjack_listener_reconnects_total";
pub const HTTP_REQUESTS_TOTAL: &str = "skipjack_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "skipjack_http_request_seconds";
pub const BACKPRESSURE_REJECTIONS_TOTAL: &str = "skipjack_backpressure_rejections_total";
pub const QUEUE_DEPTH: &str = "skipjack_queue_depth";
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "skipjack_queue_oldest_age_seconds";
pub const JOBS_PROCESSING: &str = "skipjack_jobs_processing";
pub const LLM_REQUEST_SECONDS: &str = "skipjack_llm_request_seconds";
pub const LLM_ERRORS_TOTAL: &str = "skipjack_llm_errors_total";
pub const LLM_TOKENS_TOTAL: &str = "skipjack_llm_tokens_total";
pub const CACHE_REQUESTS_TOTAL: &str = "skipjack_cache_requests_total";

/// Buckets from 1 ms to 5 min, dense enough to read p50/p95/p99 off.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub jobs_enqueued: IntCounterVec,
    pub jobs_claimed: IntCounter,
    /// Jobs that reached a final state, by `outcome` (completed, failed,
    /// cancelled).
    pub jobs_finished: IntCounterVec,
    pub jobs_retried: IntCounter,
    /// Expired leases taken back, by `result` (requeued, failed).
    pub jobs_rescued: IntCounterVec,
    /// Completions a worker wrote after losing its lease (changed nothing).
    pub jobs_lease_lost: IntCounter,
    /// Submit to first start, by priority.
    pub job_wait: HistogramVec,
    /// One attempt's run time, by kind.
    pub job_run: HistogramVec,
    pub worker_slots_busy: IntGauge,
    pub worker_slots_total: IntGauge,
    pub listener_reconnects: IntCounter,
    /// API requests by `route` (the route template, never a raw path),
    /// `method` and `status`.
    pub http_requests: IntCounterVec,
    /// API request latency by `route` and `method`.
    pub http_request_seconds: HistogramVec,
    /// Submissions refused with 429, by `scope` (global, tenant).
    pub backpressure_rejections: IntCounterVec,
    /// Queued jobs by priority, refreshed periodically.
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_age: prometheus::Gauge,
    pub jobs_processing: IntGauge,
    /// One LLM call's latency, by `provider` (simulated, anthropic, openai).
    pub llm_request: HistogramVec,
    /// Failed LLM calls, by `class` (`llm::ErrorClass::as_str`).
    pub llm_errors: IntCounterVec,
    /// Tokens consumed, by `direction` (input, output).
    pub llm_tokens: IntCounterVec,
    /// History cache operations, by `result`: `hit` and `miss` count reads;
    /// `error` counts failed operations and reads skipped while Redis is down.
    pub cache_requests: IntCounterVec,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("metric definitions are static and valid")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("metric definitions are static and valid")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("metric definitions are static and valid")
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            jobs_enqueued: counter_vec(JOBS_ENQUEUED_TOTAL, "Jobs enqueued.", &["priority"]),
            jobs_claimed: counter(JOBS_CLAIMED_TOTAL, "Jobs claimed by this worker."),
            jobs_finished: counter_vec(
                JOBS_FINISHED_TOTAL,
                "Jobs that reached a final state.",
                &["outcome"],
            ),
            jobs_retried: counter(JOBS_RETRIED_TOTAL, "Attempts that failed and were retried."),
            jobs_rescued: counter_vec(
                JOBS_RESCUED_TOTAL,
                "Jobs taken back after their lease expired.",
                &["result"],
            ),
            jobs_lease_lost: counter(
                JOBS_LEASE_LOST_TOTAL,
                "Outcomes discarded because the worker had lost the job's lease.",
            ),
            job_wait: histogram_vec(
                JOB_WAIT_SECONDS,
                "Time from submission to the first start of a job.",
                &["priority"],
            ),
            job_run: histogram_vec(JOB_RUN_SECONDS, "Run time of one attempt.", &["kind"]),
            worker_slots_busy: gauge(WORKER_SLOTS_BUSY, "Job slots in use in this worker."),
            worker_slots_total: gauge(WORKER_SLOTS_TOTAL, "Job slots of this worker."),
            listener_reconnects: counter(
                LISTENER_RECONNECTS_TOTAL,
                "Times the LISTEN connection was re-established.",
            ),
            http_requests: counter_vec(
                HTTP_REQUESTS_TOTAL,
                "API requests answered.",
                &["route", "method", "status"],
            ),
            http_request_seconds: histogram_vec(
                HTTP_REQUEST_SECONDS,
                "API request latency.",
                &["route", "method"],
            ),
            backpressure_rejections: counter_vec(
                BACKPRESSURE_REJECTIONS_TOTAL,
                "Submissions refused because the queue was full.",
                &["scope"],
            ),
            queue_depth: IntGaugeVec::new(
                Opts::new(QUEUE_DEPTH, "Queued jobs by priority."),
                &["priority"],
            )
            .expect("metric definitions are static and valid"),
            queue_oldest_age: prometheus::Gauge::new(
                QUEUE_OLDEST_AGE_SECONDS,
                "Age of the oldest job ready to run.",
            )
            .expect("metric definitions are static and valid"),
            jobs_processing: gauge(JOBS_PROCESSING, "Jobs being processed by any worker."),
            llm_request: histogram_vec(
                LLM_REQUEST_SECONDS,
                "Latency of one LLM call.",
                &["provider"],
            ),
            llm_errors: counter_vec(LLM_ERRORS_TOTAL, "Failed LLM calls.", &["class"]),
            llm_tokens: counter_vec(LLM_TOKENS_TOTAL, "LLM tokens consumed.", &["direction"]),
            cache_requests: counter_vec(
                CACHE_REQUESTS_TOTAL,
                "Conversation history cache operations.",
                &["result"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.jobs_enqueued.clone()),
            Box::new(m.jobs_claimed.clone()),
            Box::new(m.jobs_finished.clone()),
            Box::new(m.jobs_retried.clone()),
            Box::new(m.jobs_rescued.clone()),
            Box::new(m.jobs_lease_lost.clone()),
            Box::new(m.job_wait.clone()),
            Box::new(m.job_run.clone()),
            Box::new(m.worker_slots_busy.clone()),
            Box::new(m.worker_slots_total.clone()),
            Box::new(m.listener_reconnects.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_request_seconds.clone()),
            Box::new(m.backpressure_rejections.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.queue_oldest_age.clone()),
            Box::new(m.jobs_processing.clone()),
            Box::new(m.llm_request.clone()),
            Box::new(m.llm_errors.clone()),
            Box::new(m.llm_tokens.clone()),
            Box::new(m.cache_requests.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("each metric is registered once");
        }
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Records the time since `since` in `histogram`.
pub fn observe_since(histogram: &Histogram, since: chrono::DateTime<chrono::Utc>) {
    let secs = (chrono::Utc::now() - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
    histogram.observe(secs.max(0.0));
}
