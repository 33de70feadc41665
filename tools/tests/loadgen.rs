//! The load generator: a short run against an API and a chat worker in this
//! process (real Postgres), the integrity checks on bad replies and broken
//! transcripts, the report's JSON fields, and the percentiles.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::TestDb;
use futures_util::future::BoxFuture;
use serde_json::Value;
use skipjack::api::{Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::llm::settings::Secret;
use skipjack::llm::simulated::SimulatedProvider;
use skipjack::llm::{ChatRequest, ChatResponse, LlmError, Provider};
use skipjack::tenants;
use skipjack::worker::{Worker, WorkerConfig};
use skipjack_tools::loadgen::check::{
    check_reply, check_transcript, expected_reply, turn_message, MismatchKind, StoredMessage,
    TranscriptProblem,
};
use skipjack_tools::loadgen::stats::{summarize, summarize_window, Sample};
use skipjack_tools::loadgen::{self, Profile, ProgressMode, RunConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An API on 127.0.0.1:0 and a chat worker, over a fresh database.
struct System {
    _db: TestDb,
    url: String,
    key: Secret,
    stop: CancellationToken,
    api: JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<()>,
}

impl System {
    async fn start(provider: Arc<dyn Provider>, config: ApiConfig) -> System {
        Self::with_concurrency(provider, config, 50).await
    }

    async fn with_concurrency(
        provider: Arc<dyn Provider>,
        config: ApiConfig,
        concurrency: usize,
    ) -> System {
        let db = TestDb::new().await;
        let key = tenants::create_tenant_with_key(&db.pool, "loadgen", None)
            .await
            .unwrap()
            .secret()
            .to_owned();
        let stop = CancellationToken::new();
        let api = Api::start(db.pool.clone(), config, stop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = tokio::spawn(api.serve(listener));
        let worker = Arc::new(
            Worker::builder(db.pool.clone())
                .register(ChatHandler::new(db.pool.clone(), provider))
                .config(WorkerConfig {
                    maintenance: None,
                    concurrency,
                    poll_interval: Duration::from_millis(200),
                    ..WorkerConfig::default()
                })
                .build()
                .unwrap(),
        );
        let worker = {
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await.unwrap() })
        };
        System {
            _db: db,
            url,
            key: Secret::new(key),
            stop,
            api,
            worker,
        }
    }

    /// 5 users × 3 turns, think 20–80 ms.
    fn short_run(&self) -> RunConfig {
        let mut config = RunConfig::new(
            &self.url,
            self.key.clone(),
            Profile::Steady {
                users: 5,
                duration: Duration::from_secs(60),
            },
        );
        config.think = Duration::from_millis(50);
        config.think_jitter = Duration::from_millis(30);
        config.max_turns = Some(3);
        config.wait = Duration::from_secs(10);
        config.turn_timeout = Duration::from_secs(30);
        config.expected_latency = Some(Duration::from_millis(10));
        config.progress = ProgressMode::Off;
        config
    }

    async fn stop(self) {
        self.stop.cancel();
        self.api.await.unwrap().unwrap();
        self.worker.await.unwrap();
    }
}

/// The simulated provider, 0–20 ms.
fn simulated() -> Arc<dyn Provider> {
    Arc::new(SimulatedProvider::new(
        Duration::from_millis(10),
        Duration::from_millis(10),
        0.0,
    ))
}

/// A provider that answers every `every`-th call as if the history had
/// lost a turn.
struct Forgetful {
    inner: SimulatedProvider,
    calls: AtomicU64,
    every: u64,
}

impl Provider for Forgetful {
    fn name(&self) -> &'static str {
        "forgetful"
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let mut response = self.inner.chat(req).await?;
            if self.calls.fetch_add(1, Ordering::SeqCst) % self.every == self.every - 1 {
                let (_, message) = response.content.split_once("): ").unwrap();
                response.content = format!("echo(1): {message}");
            }
            Ok(response)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_steady_run_completes_every_turn_with_no_mismatch() {
    let system = System::start(simulated(), ApiConfig::default()).await;
    let config = system.short_run();
    let report = loadgen::run(config).await.unwrap();
    let c = &report.counts;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(c.submitted, 15);
    assert_eq!(c.completed, 15);
    assert_eq!(c.mismatches, 0);
    assert_eq!(c.failed + c.lost + c.unexpected_status + c.errors, 0);
    assert_eq!(c.rejected_429, 0);
    assert_eq!(c.transcripts_checked, 5);
    assert_eq!(c.transcript_problems, 0);
    assert_eq!(report.latency_ms.end_to_end.count, 15);
    assert_eq!(report.latency_ms.submit.count, 15);
    // Every user finished its three turns well before the minute was up.
    assert!(report.duration_s < 30.0, "{}", report.duration_s);
    assert!(report.throughput_turns_per_s > 0.0);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_loses_history_fails_the_run() {
    let provider = Arc::new(Forgetful {
        inner: SimulatedProvider::new(Duration::ZERO, Duration::ZERO, 0.0),
        calls: AtomicU64::new(0),
        every: 4,
    });
    let system = System::start(provider, ApiConfig::default()).await;
    let report = loadgen::run(system.short_run()).await.unwrap();
    assert_eq!(report.counts.completed, 15);
    // Calls 4, 8 and 12 were answered `echo(1)`; the ones that were first
    // turns would have been right anyway.
    assert!(report.counts.mismatches >= 1, "{}", report.summary());
    assert!(!report.passed);
    assert!(
        report.problems.iter().any(|p| p.contains("lost history")),
        "{:?}",
        report.problems
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_turns_are_retried_after_retry_after_and_counted_once() {
    // A queue of at most one job and a worker that runs one job at a time
    // for 300 ms: 8 users cannot all get in, whatever their timing.
    let slow: Arc<dyn Provider> = Arc::new(SimulatedProvider::new(
        Duration::from_millis(300),
        Duration::ZERO,
        0.0,
    ));
    let system = System::with_concurrency(
        slow,
        ApiConfig {
            max_queue_depth: 1,
            depth_refresh: Duration::from_millis(20),
            ..ApiConfig::default()
        },
        1,
    )
    .await;
    let mut config = system.short_run();
    config.profile = Profile::Steady {
        users: 8,
        duration: Duration::from_secs(60),
    };
    config.max_turns = Some(2);
    let report = loadgen::run(config).await.unwrap();
    let c = &report.counts;
    assert!(report.passed, "{}", report.summary());
    assert!(c.rejected_429 > 0, "{}", report.summary());
    assert_eq!(c.submitted, 16);
    assert_eq!(c.completed, 16);
    assert_eq!(report.latency_ms.rejected_429.count, c.rejected_429);
    // Every user took part and was served twice; some turn waited in 429s.
    let f = &report.fairness;
    assert_eq!((f.users, f.never_served, f.fewest_turns), (8, 0, 2));
    assert!(f.longest_refused_s > 0.0, "{}", report.summary());
    assert!(f.max_gap_s >= f.longest_refused_s, "{f:?}");
    assert!(report.summary().contains("never served"));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_has_the_documented_fields() {
    let system = System::start(simulated(), ApiConfig::default()).await;
    let report = loadgen::run(system.short_run()).await.unwrap();
    system.stop().await;
    let dir = std::env::temp_dir().join(format!("skipjack-loadgen-{}", loadgen::new_run_id()));
    loadgen::write_report(&report, &dir).unwrap();
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    for field in [
        "scenario",
        "run_id",
        "started_at",
        "profile",
        "profile_description",
        "settings",
        "duration_s",
        "drain_s",
        "counts",
        "throughput_turns_per_s",
        "latency_ms",
        "errors_by_kind",
        "problems",
        "phases",
        "intervals",
        "timeline",
        "queue",
        "load_average",
        "fairness",
        "passed",
        "failures",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json:#}");
    }
    for count in [
        "submitted",
        "completed",
        "failed",
        "mismatches",
        "lost",
        "unexpected_status",
        "errors",
        "rejected_429",
        "abandoned",
        "transcripts_checked",
        "transcript_problems",
    ] {
        assert!(json["counts"][count].is_u64(), "counts.{count}");
    }
    for field in [
        "users",
        "never_served",
        "fewest_turns",
        "users_gap_over_60s",
    ] {
        assert!(json["fairness"][field].is_u64(), "fairness.{field}");
    }
    for field in ["max_gap_s", "longest_refused_s"] {
        assert!(json["fairness"][field].is_number(), "fairness.{field}");
    }
    for kind in ["end_to_end", "submit", "rejected_429"] {
        for stat in ["count", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(
                json["latency_ms"][kind][stat].is_number(),
                "latency_ms.{kind}.{stat}"
            );
        }
    }
    assert_eq!(json["counts"]["completed"], 15);
    // The generator's own CPU; no stream section without --stream.
    assert_eq!(json["client_cpu"]["turns"], 15);
    assert!(json["client_cpu"]["per_turn_ms"].is_number());
    assert!(json.get("stream").is_none());
    assert_eq!(json["profile"]["kind"], "steady");
    assert_eq!(json["phases"][0]["name"], "steady");
    assert!(json["phases"][0]["expected_turns_per_s"].is_number());
    let point = &json["timeline"][0];
    for field in [
        "t",
        "users",
        "completed",
        "throughput_turns_per_s",
        "rejected_429",
    ] {
        assert!(point.get(field).is_some(), "timeline.{field}");
    }
    // Never the key.
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    assert!(!text.contains(system_key_prefix()));
    let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
    assert!(summary.contains("result: PASS"), "{summary}");
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("Throughput"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    // The report reads back (what `loadgen replot` does).
    let back = skipjack_tools::loadgen::Report::read(&dir).unwrap();
    assert_eq!(back.counts.completed, 15);
    assert_eq!(back.timeline.len(), report.timeline.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every API key starts like this.
fn system_key_prefix() -> &'static str {
    "sk_"
}

#[test]
fn the_checker_flags_a_wrong_reply() {
    let m = turn_message("u1", 2);
    assert_eq!(expected_reply(1, &m), "echo(3): turn 2 from user u1");
    assert!(check_reply(1, &m, "echo(3): turn 2 from user u1").is_ok());
    let bad = check_reply(1, &m, "echo(3): turn 2 from user u2").unwrap_err();
    assert_eq!(bad.kind, MismatchKind::WrongMessage);
    assert_eq!(bad.expected, "echo(3): turn 2 from user u1");
    let bad = check_reply(1, &m, "echo(1): turn 2 from user u1").unwrap_err();
    assert_eq!(bad.kind, MismatchKind::LostHistory);
    let bad = check_reply(1, &m, "echo(5): turn 2 from user u1").unwrap_err();
    assert_eq!(bad.kind, MismatchKind::ExtraHistory);
    let bad = check_reply(1, &m, "").unwrap_err();
    assert_eq!(bad.kind, MismatchKind::Malformed);
}

/// The stored messages of a conversation whose turns went as listed.
fn transcript(turns: &[&str]) -> Vec<StoredMessage> {
    turns
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            [
                StoredMessage::new("user", m),
                StoredMessage::new("assistant", &expected_reply(i as u64, m)),
            ]
        })
        .collect()
}

#[test]
fn the_checker_flags_a_lost_or_reordered_turn() {
    let turns: Vec<String> = (1..=3).map(|k| turn_message("u", k)).collect();
    let refs: Vec<&str> = turns.iter().map(String::as_str).collect();
    assert_eq!(check_transcript(&turns, &transcript(&refs)), None);

    // Turn 2 lost: the conversation goes from turn 1 to turn 3.
    let lost = transcript(&[refs[0], refs[2]]);
    assert_eq!(
        check_transcript(&turns, &lost),
        Some(TranscriptProblem::LostTurn { turn: 2 })
    );
    // Turn 3 stored before turn 2.
    let reordered = transcript(&[refs[0], refs[2], refs[1]]);
    assert_eq!(
        check_transcript(&turns, &reordered),
        Some(TranscriptProblem::LostTurn { turn: 2 })
    );
    // Turn 1 stored twice.
    let duplicated = transcript(&[refs[0], refs[0], refs[1], refs[2]]);
    assert_eq!(
        check_transcript(&turns, &duplicated),
        Some(TranscriptProblem::ReorderedTurn {
            turn: 2,
            found: refs[0].to_owned()
        })
    );
    // A reply computed over the wrong history.
    let mut wrong = transcript(&refs);
    wrong[3].content = "echo(1): turn 2 from user u".to_owned();
    assert!(matches!(
        check_transcript(&turns, &wrong),
        Some(TranscriptProblem::WrongMessage { index: 3, .. })
    ));
    // A completed turn missing at the end.
    let short = transcript(&refs[..2]);
    assert_eq!(
        check_transcript(&turns, &short),
        Some(TranscriptProblem::WrongLength {
            expected: 6,
            found: 4
        })
    );

    // In the reply stream: after a lost turn 2, turn 3 sees 3 messages, not 5.
    let bad = check_reply(2, &turns[2], &expected_reply(1, &turns[2])).unwrap_err();
    assert_eq!(bad.kind, MismatchKind::LostHistory);
}

#[test]
fn percentiles_of_a_known_sample() {
    // 1 ms … 1000 ms, one each: p50 = 500, p95 = 950, p99 = 990, max 1000.
    let summary = summarize((1..=1000u64).map(|ms| ms * 1000));
    assert_eq!(summary.count, 1000);
    let close = |got: f64, want: f64| {
        // HDR with 3 significant digits: within 0.1%, never below.
        assert!(got >= want && got <= want * 1.001, "{got} vs {want}");
    };
    close(summary.p50_ms, 500.0);
    close(summary.p95_ms, 950.0);
    close(summary.p99_ms, 990.0);
    assert_eq!(summary.max_ms, 1000.0);
    assert!((summary.mean_ms - 500.5).abs() < 0.5, "{}", summary.mean_ms);

    // Skewed: 99 fast samples and one slow one.
    let mut skewed = vec![10_000u64; 99];
    skewed.push(5_000_000);
    let s = summarize(skewed);
    close(s.p50_ms, 10.0);
    close(s.p99_ms, 10.0);
    assert_eq!(s.max_ms, 5000.0);

    // A window picks samples by the time they were taken.
    let samples: Vec<Sample> = (0..100)
        .map(|i| Sample {
            at_ms: i * 100,
            latency_us: if i < 50 { 1_000 } else { 2_000 },
        })
        .collect();
    let late = summarize_window(&samples, Duration::from_secs(5), Duration::from_secs(10));
    assert_eq!(late.count, 50);
    close(late.p50_ms, 2.0);
}
