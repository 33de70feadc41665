//! Prometheus metrics: every name is a constant here, and no label carries
//! an id (job, tenant, conversation), so the series count stays bounded.
//! One label names tenants: [`TENANT_OLDEST_AGE_SECONDS`], for the ten
//! tenants waiting longest at each reading, and no others.
//!
//! One process-wide registry; `/metrics` renders it with [`render`], and
//! [`exported`] lists every name it can render (the dashboards, alert rules
//! and autoscaling queries are checked against it in
//! `tests/observability.rs`).
//!
//! # The queue gauges
//! [`QUEUE_DEPTH`], [`QUEUE_OLDEST_AGE_SECONDS`] and [`JOBS_PROCESSING`]
//! describe the whole queue, not this process. They come from one periodic
//! query run by one process at a time (the leader of
//! [`crate::queue::gauges`]); the other processes export none of these
//! series, so any aggregation (`max`, `sum`) over all instances reads the
//! leader's values. [`QUEUE_STATS_LEADER`] says which process that is.

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// Name of [`Metrics::jobs_enqueued`].
pub const JOBS_ENQUEUED_TOTAL: &str = "skipjack_jobs_enqueued_total";
/// Name of [`Metrics::jobs_claimed`].
pub const JOBS_CLAIMED_TOTAL: &str = "skipjack_jobs_claimed_total";
/// Name of [`Metrics::jobs_finished`].
pub const JOBS_FINISHED_TOTAL: &str = "skipjack_jobs_finished_total";
/// Name of [`Metrics::jobs_retried`].
pub const JOBS_RETRIED_TOTAL: &str = "skipjack_jobs_retried_total";
/// Name of [`Metrics::jobs_rescued`].
pub const JOBS_RESCUED_TOTAL: &str = "skipjack_jobs_rescued_total";
/// Name of [`Metrics::jobs_lease_lost`].
pub const JOBS_LEASE_LOST_TOTAL: &str = "skipjack_jobs_lease_lost_total";
/// Name of [`Metrics::worker_jobs_cancelled`].
pub const WORKER_JOBS_CANCELLED_TOTAL: &str = "skipjack_worker_jobs_cancelled_total";
/// Name of [`Metrics::submit_stage`].
pub const SUBMIT_STAGE_SECONDS: &str = "skipjack_submit_stage_seconds";
/// The stages of a chat submission that [`Metrics::submit_stage`] times:
/// finding the conversation, waiting for a group-commit batch to start
/// writing, and that batch's insert and commit.
pub const SUBMIT_STAGES: [&str; 3] = ["resolve", "enqueue_wait", "enqueue_flush"];
/// Name of [`Metrics::job_wait`].
pub const JOB_WAIT_SECONDS: &str = "skipjack_job_wait_seconds";
/// Name of [`Metrics::job_run`].
pub const JOB_RUN_SECONDS: &str = "skipjack_job_run_seconds";
/// Name of [`Metrics::worker_slots_busy`].
pub const WORKER_SLOTS_BUSY: &str = "skipjack_worker_slots_busy";
/// Name of [`Metrics::worker_slots_total`].
pub const WORKER_SLOTS_TOTAL: &str = "skipjack_worker_slots_total";
/// Name of [`Metrics::listener_reconnects`].
pub const LISTENER_RECONNECTS_TOTAL: &str = "skipjack_listener_reconnects_total";
/// Name of [`Metrics::long_polls_refused`].
pub const LONG_POLLS_REFUSED_TOTAL: &str = "skipjack_long_polls_refused_total";
/// Name of [`Metrics::long_poll_rechecks_woken`].
pub const LONG_POLL_RECHECK_WAKEUPS_TOTAL: &str = "skipjack_long_poll_recheck_wakeups_total";
/// Name of [`Metrics::http_requests`].
pub const HTTP_REQUESTS_TOTAL: &str = "skipjack_http_requests_total";
/// Name of [`Metrics::http_request_seconds`].
pub const HTTP_REQUEST_SECONDS: &str = "skipjack_http_request_seconds";
/// Name of [`Metrics::backpressure_rejections`].
pub const BACKPRESSURE_REJECTIONS_TOTAL: &str = "skipjack_backpressure_rejections_total";
/// Name of [`Metrics::admission_waiters`].
pub const ADMISSION_WAITERS: &str = "skipjack_admission_waiters";
/// Name of [`Metrics::admission_oldest_wait`].
pub const ADMISSION_OLDEST_WAIT_SECONDS: &str = "skipjack_admission_oldest_wait_seconds";
/// Name of [`Metrics::queue_depth`].
pub const QUEUE_DEPTH: &str = "skipjack_queue_depth";
/// Name of [`Metrics::queue_oldest_age`].
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "skipjack_queue_oldest_age_seconds";
/// Name of [`Metrics::tenant_oldest_age`].
pub const TENANT_OLDEST_AGE_SECONDS: &str = "skipjack_tenant_oldest_queued_age_seconds";
/// Name of [`Metrics::queues_aged`].
pub const QUEUES_AGED_TOTAL: &str = "skipjack_queues_aged_total";
/// Name of [`Metrics::jobs_processing`].
pub const JOBS_PROCESSING: &str = "skipjack_jobs_processing";
/// Name of [`Metrics::llm_request`].
pub const LLM_REQUEST_SECONDS: &str = "skipjack_llm_request_seconds";
/// Name of [`Metrics::llm_errors`].
pub const LLM_ERRORS_TOTAL: &str = "skipjack_llm_errors_total";
/// Name of [`Metrics::llm_tokens`].
pub const LLM_TOKENS_TOTAL: &str = "skipjack_llm_tokens_total";
/// Name of [`Metrics::llm_cost`].
pub const LLM_COST_USD_TOTAL: &str = "skipjack_llm_cost_usd_total";
/// Name of [`Metrics::llm_budget_used`].
pub const LLM_BUDGET_USED_TOTAL: &str = "skipjack_llm_budget_used_total";
/// Name of [`Metrics::llm_budget_limit`].
pub const LLM_BUDGET_LIMIT: &str = "skipjack_llm_budget_limit";
/// Name of [`Metrics::llm_budget_waits`].
pub const LLM_BUDGET_WAITS_TOTAL: &str = "skipjack_llm_budget_waits_total";
/// Name of [`Metrics::cache_requests`].
pub const CACHE_REQUESTS_TOTAL: &str = "skipjack_cache_requests_total";
/// Name of [`Metrics::maintenance_lock_timeouts`].
pub const MAINTENANCE_LOCK_TIMEOUTS_TOTAL: &str = "skipjack_maintenance_lock_timeouts_total";
/// Name of [`Metrics::stream_deltas_written`].
pub const STREAM_PIECES_WRITTEN_TOTAL: &str = "skipjack_stream_pieces_written_total";
/// Name of [`Metrics::streams_open`].
pub const STREAMS_OPEN: &str = "skipjack_streams_open";
/// Name of [`Metrics::webhook_deliveries`].
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "skipjack_webhook_deliveries_total";
/// Name of [`Metrics::webhook_delivery_seconds`].
pub const WEBHOOK_DELIVERY_SECONDS: &str = "skipjack_webhook_delivery_seconds";
/// Name of [`Metrics::queue_stats_leader`].
pub const QUEUE_STATS_LEADER: &str = "skipjack_queue_stats_leader";
/// Name of [`Metrics::queue_stats_query`].
pub const QUEUE_STATS_QUERY_SECONDS: &str = "skipjack_queue_stats_query_seconds";
/// Name of [`Metrics::queue_stats_updated`].
pub const QUEUE_STATS_UPDATED_TIMESTAMP_SECONDS: &str =
    "skipjack_queue_stats_updated_timestamp_seconds";

/// Buckets from 1 ms to 5 min, dense enough to read p50/p95/p99 off.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process's metrics.
pub struct Metrics {
    /// The registry every metric below is registered in.
    pub registry: Registry,
    /// Jobs enqueued, by `priority`.
    pub jobs_enqueued: IntCounterVec,
    /// Jobs claimed by this worker.
    pub jobs_claimed: IntCounter,
    /// Jobs that reached a final state, by `outcome` (completed, failed,
    /// cancelled).
    pub jobs_finished: IntCounterVec,
    /// Attempts that failed and were retried.
    pub jobs_retried: IntCounter,
    /// Expired leases taken back, by `result` (requeued, failed).
    pub jobs_rescued: IntCounterVec,
    /// Completions a worker wrote after losing its lease (changed nothing).
    pub jobs_lease_lost: IntCounter,
    /// Pieces of streamed replies written by this worker.
    pub stream_deltas_written: IntCounter,
    /// Event streams (`GET /v1/chat/{id}/stream`) open in this API process.
    pub streams_open: IntGauge,
    /// Running attempts this worker stopped because their job was
    /// cancelled (nothing written for them).
    pub worker_jobs_cancelled: IntCounter,
    /// Time of one stage of a chat submission in the API, by stage
    /// ([`SUBMIT_STAGES`]).
    pub submit_stage: HistogramVec,
    /// Submit to first start, by priority.
    pub job_wait: HistogramVec,
    /// One attempt's run time, by kind.
    pub job_run: HistogramVec,
    /// Job slots in use in this worker.
    pub worker_slots_busy: IntGauge,
    /// Job slots of this worker (its concurrency).
    pub worker_slots_total: IntGauge,
    /// Times the LISTEN connection was re-established.
    pub listener_reconnects: IntCounter,
    /// Long-polls refused (429) because a cap was reached, by scope.
    pub long_polls_refused: IntCounterVec,
    /// Long-polls woken by the periodic re-check rather than a NOTIFY: each
    /// is a completion whose NOTIFY was not heard.
    pub long_poll_rechecks_woken: IntCounter,
    /// API requests by `route` (the route template, never a raw path),
    /// `method` and `status`.
    pub http_requests: IntCounterVec,
    /// API request latency by `route` and `method`.
    pub http_request_seconds: HistogramVec,
    /// Submissions refused with 429, by `scope` (global, tenant).
    pub backpressure_rejections: IntCounterVec,
    /// Refused clients this API process remembers in its admission line
    /// (`api::admission`), waiting for their turn.
    pub admission_waiters: IntGauge,
    /// How long the longest-waiting client in this process's admission line
    /// has been refused (0 when nobody waits).
    pub admission_oldest_wait: Gauge,
    /// Queued jobs (ready, delayed or blocked behind their conversation) by
    /// priority, every priority 1..=10 (0 when empty). Exported by the queue
    /// gauges leader only.
    pub queue_depth: IntGaugeVec,
    /// Seconds the oldest job ready to run has been waiting (0 when none
    /// is). No labels; a vector so that non-leaders can export nothing.
    pub queue_oldest_age: GaugeVec,
    /// The ten tenants waiting longest, by name: the one label that names a
    /// tenant, bounded to ten series per reading (and reset at each).
    pub tenant_oldest_age: GaugeVec,
    /// Tenant queues whose effective priority aging raised
    /// (docs/scheduling.md).
    pub queues_aged: IntCounter,
    /// Jobs being processed by any worker. No labels; leader only.
    pub jobs_processing: IntGaugeVec,
    /// 1 in the process that runs the queue gauges query, 0 elsewhere.
    pub queue_stats_leader: IntGauge,
    /// Duration of the queue gauges query (its cost, watched in production).
    pub queue_stats_query: Histogram,
    /// Unix time of the last successful queue gauges query (leader only):
    /// the gauges are stale when this stops moving.
    pub queue_stats_updated: GaugeVec,
    /// One LLM call's latency, by `provider` (simulated, anthropic, openai).
    pub llm_request: HistogramVec,
    /// Failed LLM calls, by `class` (`llm::ErrorClass::as_str`).
    pub llm_errors: IntCounterVec,
    /// Tokens consumed, by `direction` (input, output), `provider` and
    /// `model` (the configured model name, see [`crate::llm::cost`]).
    pub llm_tokens: IntCounterVec,
    /// Estimated spend in US dollars, by `provider` and `model`: tokens
    /// times the configured price (`SKIPJACK_LLM_PRICE_PER_MTOK`); stays 0
    /// for a model without a price.
    pub llm_cost: CounterVec,
    /// Provider budget used by this process, by `endpoint` (URL without
    /// credentials and position), `model` and `unit`: `requests` granted,
    /// and `tokens` as settled with the reported usage.
    pub llm_budget_used: IntCounterVec,
    /// Configured provider budget per minute, by `endpoint`, `model` and
    /// `unit` (0: no limit); the same in every process.
    pub llm_budget_limit: GaugeVec,
    /// Calls that found no provider budget, by `how` they waited:
    /// `in_place` (briefly, holding the slot) or `snoozed` (the job went
    /// back to the queue without using an attempt).
    pub llm_budget_waits: IntCounterVec,
    /// History cache operations, by `result`: `hit` and `miss` count reads;
    /// `error` counts failed operations and reads skipped while Redis is down.
    pub cache_requests: IntCounterVec,
    /// Maintenance steps that gave up on their locks (a long reader held
    /// them) and were left for the next pass, by `step` (create_partition,
    /// drop_partition, prune_history_default).
    pub maintenance_lock_timeouts: IntCounterVec,
    /// Webhook delivery attempts by `outcome`: `delivered` (2xx),
    /// `retried` (failed, tried again later), `dead` (failed on the last
    /// attempt: the delivery job ends `failed`), `skipped` (the webhook was
    /// deleted).
    pub webhook_deliveries: IntCounterVec,
    /// Duration of one webhook POST, answered or not.
    pub webhook_delivery_seconds: Histogram,
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

/// What kind of series a metric renders as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Renders as `NAME`, only ever going up.
    Counter,
    /// Renders as `NAME`, going up and down.
    Gauge,
    /// Renders as `NAME_bucket`, `NAME_sum` and `NAME_count`, never `NAME`.
    Histogram,
}

/// One metric the process can export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// The metric's name (`skipjack_…`).
    pub name: String,
    /// How it renders.
    pub kind: MetricKind,
    /// Its label names (never an id).
    pub labels: Vec<String>,
}

impl Exported {
    /// The series names Prometheus stores for it.
    pub fn series_names(&self) -> Vec<String> {
        match self.kind {
            MetricKind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
            _ => vec![self.name.clone()],
        }
    }
}

/// Registers collectors and remembers what they export.
struct Registrar {
    registry: Registry,
    exported: Vec<Exported>,
}

impl Registrar {
    fn add<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        collector: &C,
        kind: MetricKind,
    ) {
        for desc in collector.desc() {
            self.exported.push(Exported {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
            });
        }
        self.registry
            .register(Box::new(collector.clone()))
            .expect("each metric is registered once");
    }
}

impl Metrics {
    fn new() -> (Self, Vec<Exported>) {
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
            stream_deltas_written: counter(
                STREAM_PIECES_WRITTEN_TOTAL,
                "Pieces of streamed replies written for the API's event streams.",
            ),
            streams_open: gauge(STREAMS_OPEN, "Event streams open in this API process."),
            worker_jobs_cancelled: counter(
                WORKER_JOBS_CANCELLED_TOTAL,
                "Running attempts stopped because their job was cancelled.",
            ),
            submit_stage: histogram_vec(
                SUBMIT_STAGE_SECONDS,
                "Time of one stage of a chat submission in the API: resolve (the conversation), enqueue_wait (until its group-commit batch starts writing), enqueue_flush (that batch's insert and commit).",
                &["stage"],
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
            long_polls_refused: counter_vec(
                LONG_POLLS_REFUSED_TOTAL,
                "Long-polls refused with 429 because the process or tenant cap was reached.",
                &["scope"],
            ),
            long_poll_rechecks_woken: counter(
                LONG_POLL_RECHECK_WAKEUPS_TOTAL,
                "Long-polls woken by the periodic re-check: completions whose NOTIFY was not heard.",
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
            admission_waiters: gauge(
                ADMISSION_WAITERS,
                "Refused clients waiting in this process's admission line.",
            ),
            admission_oldest_wait: Gauge::new(
                ADMISSION_OLDEST_WAIT_SECONDS,
                "Seconds the longest-waiting client in this process's admission line has been refused.",
            )
            .expect("metric definitions are static and valid"),
            queue_depth: IntGaugeVec::new(
                Opts::new(QUEUE_DEPTH, "Queued jobs by priority (whole queue)."),
                &["priority"],
            )
            .expect("metric definitions are static and valid"),
            queue_oldest_age: GaugeVec::new(
                Opts::new(
                    QUEUE_OLDEST_AGE_SECONDS,
                    "Age of the oldest job ready to run (whole queue).",
                ),
                &[],
            )
            .expect("metric definitions are static and valid"),
            tenant_oldest_age: GaugeVec::new(
                Opts::new(
                    TENANT_OLDEST_AGE_SECONDS,
                    "Age of the oldest ready job of the ten tenants waiting longest (whole queue).",
                ),
                &["tenant"],
            )
            .expect("metric definitions are static and valid"),
            queues_aged: counter(
                QUEUES_AGED_TOTAL,
                "Tenant queues whose priority aging raised (docs/scheduling.md).",
            ),
            jobs_processing: IntGaugeVec::new(
                Opts::new(JOBS_PROCESSING, "Jobs being processed by any worker."),
                &[],
            )
            .expect("metric definitions are static and valid"),
            queue_stats_leader: gauge(
                QUEUE_STATS_LEADER,
                "1 in the process that refreshes the queue gauges.",
            ),
            queue_stats_query: Histogram::with_opts(
                HistogramOpts::new(
                    QUEUE_STATS_QUERY_SECONDS,
                    "Duration of the queue gauges query.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric definitions are static and valid"),
            queue_stats_updated: GaugeVec::new(
                Opts::new(
                    QUEUE_STATS_UPDATED_TIMESTAMP_SECONDS,
                    "Unix time of the last queue gauges refresh.",
                ),
                &[],
            )
            .expect("metric definitions are static and valid"),
            llm_request: histogram_vec(
                LLM_REQUEST_SECONDS,
                "Latency of one LLM call.",
                &["provider"],
            ),
            llm_errors: counter_vec(LLM_ERRORS_TOTAL, "Failed LLM calls.", &["class"]),
            llm_tokens: counter_vec(
                LLM_TOKENS_TOTAL,
                "LLM tokens consumed.",
                &["direction", "provider", "model"],
            ),
            llm_cost: CounterVec::new(
                Opts::new(
                    LLM_COST_USD_TOTAL,
                    "Estimated LLM spend in US dollars (tokens times the configured price).",
                ),
                &["provider", "model"],
            )
            .expect("metric definitions are static and valid"),
            llm_budget_used: counter_vec(
                LLM_BUDGET_USED_TOTAL,
                "Provider budget used (requests granted, tokens settled).",
                &["endpoint", "model", "unit"],
            ),
            llm_budget_limit: GaugeVec::new(
                Opts::new(LLM_BUDGET_LIMIT, "Configured provider budget per minute."),
                &["endpoint", "model", "unit"],
            )
            .expect("metric definitions are static and valid"),
            llm_budget_waits: counter_vec(
                LLM_BUDGET_WAITS_TOTAL,
                "LLM calls that found no provider budget, by how they waited.",
                &["how"],
            ),
            cache_requests: counter_vec(
                CACHE_REQUESTS_TOTAL,
                "Conversation history cache operations.",
                &["result"],
            ),
            maintenance_lock_timeouts: counter_vec(
                MAINTENANCE_LOCK_TIMEOUTS_TOTAL,
                "Maintenance steps that timed out waiting for their locks and were left for the next pass.",
                &["step"],
            ),
            webhook_deliveries: counter_vec(
                WEBHOOK_DELIVERIES_TOTAL,
                "Webhook delivery attempts by outcome.",
                &["outcome"],
            ),
            webhook_delivery_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    WEBHOOK_DELIVERY_SECONDS,
                    "Duration of one webhook delivery attempt.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric definitions are static and valid"),
        };
        let mut r = Registrar {
            registry: m.registry.clone(),
            exported: Vec::new(),
        };
        use MetricKind as K;
        r.add(&m.jobs_enqueued, K::Counter);
        r.add(&m.jobs_claimed, K::Counter);
        r.add(&m.jobs_finished, K::Counter);
        r.add(&m.jobs_retried, K::Counter);
        r.add(&m.jobs_rescued, K::Counter);
        r.add(&m.jobs_lease_lost, K::Counter);
        r.add(&m.stream_deltas_written, K::Counter);
        r.add(&m.streams_open, K::Gauge);
        r.add(&m.worker_jobs_cancelled, K::Counter);
        r.add(&m.submit_stage, K::Histogram);
        r.add(&m.job_wait, K::Histogram);
        r.add(&m.job_run, K::Histogram);
        r.add(&m.worker_slots_busy, K::Gauge);
        r.add(&m.worker_slots_total, K::Gauge);
        r.add(&m.listener_reconnects, K::Counter);
        r.add(&m.long_polls_refused, K::Counter);
        r.add(&m.long_poll_rechecks_woken, K::Counter);
        r.add(&m.http_requests, K::Counter);
        r.add(&m.http_request_seconds, K::Histogram);
        r.add(&m.backpressure_rejections, K::Counter);
        r.add(&m.admission_waiters, K::Gauge);
        r.add(&m.admission_oldest_wait, K::Gauge);
        r.add(&m.queue_depth, K::Gauge);
        r.add(&m.queue_oldest_age, K::Gauge);
        r.add(&m.tenant_oldest_age, K::Gauge);
        r.add(&m.queues_aged, K::Counter);
        r.add(&m.jobs_processing, K::Gauge);
        r.add(&m.queue_stats_leader, K::Gauge);
        r.add(&m.queue_stats_query, K::Histogram);
        r.add(&m.queue_stats_updated, K::Gauge);
        r.add(&m.llm_request, K::Histogram);
        r.add(&m.llm_errors, K::Counter);
        r.add(&m.llm_tokens, K::Counter);
        r.add(&m.llm_cost, K::Counter);
        r.add(&m.llm_budget_used, K::Counter);
        r.add(&m.llm_budget_limit, K::Gauge);
        r.add(&m.llm_budget_waits, K::Counter);
        r.add(&m.cache_requests, K::Counter);
        r.add(&m.maintenance_lock_timeouts, K::Counter);
        r.add(&m.webhook_deliveries, K::Counter);
        r.add(&m.webhook_delivery_seconds, K::Histogram);
        (m, r.exported)
    }
}

static METRICS: LazyLock<(Metrics, Vec<Exported>)> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS.0
}

/// Every metric registered, whether or not it has a value yet (a labelled
/// metric renders only once one of its label sets is used).
pub fn exported() -> &'static [Exported] {
    &METRICS.1
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Series that exist from the first scrape.
//
// A labelled metric renders nothing until one of its label sets is used, so
// `rate()` of a counter that has never moved is "no data", not 0, and an
// alert or a dashboard panel on it cannot tell "nothing happened" from "not
// scraped". Each process therefore touches, at start-up, every label set it
// can later produce; the values are 0 until real work moves them.

/// The label values of `jobs_finished`'s `outcome`.
pub const FINISH_OUTCOMES: [&str; 3] = ["completed", "failed", "cancelled"];
/// The label values of `jobs_rescued`'s `result`.
pub const RESCUE_RESULTS: [&str; 2] = ["requeued", "failed"];
/// The label values of `backpressure_rejections`' `scope`.
pub const BACKPRESSURE_SCOPES: [&str; 2] = ["global", "tenant"];
/// The label values of `long_polls_refused`' `scope`.
pub const LONG_POLL_SCOPES: [&str; 2] = ["process", "tenant"];
/// The label values of `maintenance_lock_timeouts`' `step`.
pub const MAINTENANCE_STEPS: [&str; 3] = [
    "create_partition",
    "drop_partition",
    "prune_history_default",
];
/// The label values of `cache_requests`' `result`.
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "error"];
/// The label values of `webhook_deliveries`' `outcome`.
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["delivered", "retried", "dead", "skipped"];
/// The label values of `llm_tokens`' `direction`.
pub const TOKEN_DIRECTIONS: [&str; 2] = ["input", "output"];

/// The label values of `priority` (the queue's priorities, 1..=10).
pub const PRIORITIES: std::ops::RangeInclusive<i16> = 1..=10;
/// The label values of `llm_errors`' `class` (the LLM's error classes).
pub const LLM_ERROR_CLASSES: [&str; 7] = [
    "rate_limited",
    "server",
    "timeout",
    "connect",
    "client",
    "malformed",
    "simulated",
];
/// The label values of `llm_budget_waits`' `how`: waited in place for the
/// provider budget, or gave the job back to the queue.
pub const BUDGET_WAITS: [&str; 2] = ["in_place", "snoozed"];

fn priorities() -> impl Iterator<Item = String> {
    PRIORITIES.map(|p| p.to_string())
}

/// Creates the API's labelled series at 0: submissions by priority,
/// cancellations, 429s and refused long-polls by scope, and for each `(route, method, status)` in
/// `routes` (the documented answers of every route) the request counter and
/// the latency histogram.
pub fn init_api<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
    let m = metrics();
    for priority in priorities() {
        m.jobs_enqueued.with_label_values(&[&priority]);
    }
    m.jobs_finished.with_label_values(&["cancelled"]);
    for stage in SUBMIT_STAGES {
        m.submit_stage.with_label_values(&[stage]);
    }
    for scope in BACKPRESSURE_SCOPES {
        m.backpressure_rejections.with_label_values(&[scope]);
    }
    for scope in LONG_POLL_SCOPES {
        m.long_polls_refused.with_label_values(&[scope]);
    }
    for (route, method, status) in routes {
        m.http_requests.with_label_values(&[route, method, status]);
        m.http_request_seconds.with_label_values(&[route, method]);
    }
}

/// Creates a worker's labelled series at 0: outcomes, rescues, waits by
/// priority, run times of each handler `kinds`, LLM errors by class and the
/// history cache's results, webhook delivery outcomes and provider budget
/// waits. The LLM's per-model series come from
/// [`crate::llm::cost::TokenMeter::new`], the per-endpoint budget series
/// from [`crate::llm::budget::Budget::new`] (workers with budgets only).
pub fn init_worker(kinds: &[&str]) {
    let m = metrics();
    for outcome in FINISH_OUTCOMES {
        m.jobs_finished.with_label_values(&[outcome]);
    }
    for result in RESCUE_RESULTS {
        m.jobs_rescued.with_label_values(&[result]);
    }
    for priority in priorities() {
        m.job_wait.with_label_values(&[&priority]);
    }
    for kind in kinds {
        m.job_run.with_label_values(&[kind]);
    }
    for class in LLM_ERROR_CLASSES {
        m.llm_errors.with_label_values(&[class]);
    }
    for result in CACHE_RESULTS {
        m.cache_requests.with_label_values(&[result]);
    }
    for step in MAINTENANCE_STEPS {
        m.maintenance_lock_timeouts.with_label_values(&[step]);
    }
    for outcome in WEBHOOK_OUTCOMES {
        m.webhook_deliveries.with_label_values(&[outcome]);
    }
    for how in BUDGET_WAITS {
        m.llm_budget_waits.with_label_values(&[how]);
    }
}

/// Records the time since `since` in `histogram`.
pub fn observe_since(histogram: &Histogram, since: chrono::DateTime<chrono::Utc>) {
    let secs = (chrono::Utc::now() - since).num_microseconds().unwrap_or(0) as f64 / 1e6;
    histogram.observe(secs.max(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for e in exported() {
            assert!(e.name.starts_with("skipjack_"), "{}", e.name);
            match e.kind {
                MetricKind::Counter => assert!(e.name.ends_with("_total"), "{}", e.name),
                MetricKind::Histogram => assert!(e.name.ends_with("_seconds"), "{}", e.name),
                // `_total` is for counters; skipjack_worker_slots_total (a
                // gauge: the slot count) predates this test and is part of
                // what dashboards already query, so it keeps its name.
                MetricKind::Gauge if e.name == WORKER_SLOTS_TOTAL => {}
                MetricKind::Gauge => assert!(!e.name.ends_with("_total"), "{}", e.name),
            }
            for label in &e.labels {
                assert!(
                    label != "id" && !label.ends_with("_id"),
                    "{} has an id label {label}",
                    e.name
                );
            }
        }
        assert_eq!(exported().len(), 41);
    }

    #[test]
    fn leader_gauges_render_nothing_until_set() {
        // Label-less vectors: a process that never refreshed the queue
        // gauges exports none of their series.
        let text = render();
        let prefix = format!("{QUEUE_OLDEST_AGE_SECONDS} ");
        assert!(!text.lines().any(|l| l.starts_with(&prefix)));
    }
}
