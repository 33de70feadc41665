//! The load generator behind the `loadgen` binary: virtual chat users that
//! submit turns, long-poll the answers (or, with `--stream`, follow them
//! over `GET /v1/chat/{id}/stream`), check every reply against the
//! simulated provider's `echo(N)` contract, and report throughput, latency
//! percentiles, errors, 429s, queue depth and the generator's own CPU time.
//!
//! - [`profile`]: how many users are active when (steady, ramp, spike,
//!   soak).
//! - [`runner`]: the users, the controller, the queue sampler, the progress
//!   line, the final transcript check.
//! - [`check`]: the integrity checks (reply and transcript).
//! - [`stream`]: one turn's event stream and its checks (`--stream`).
//! - [`client`]: the HTTP calls, over one shared connection pool.
//! - [`stats`]: counters, latency samples, HDR percentiles.
//! - [`report`]: the report (`report.json`, `summary.txt`) and
//!   [`chart`] (`chart.svg`).
//! - [`args`]: the command line.
//!
//! `scripts/scenario.sh` runs the named scenarios (black-friday, overload,
//! soak) against a fresh database, API and workers.

pub mod args;
pub mod chart;
pub mod check;
pub mod client;
pub mod profile;
pub mod report;
pub mod runner;
pub mod stats;
pub mod stream;

pub use args::LoadgenArgs;
pub use profile::Profile;
pub use report::Report;
pub use runner::run;

use skipjack::llm::settings::Secret;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The API, e.g. `http://127.0.0.1:8000`.
    pub base_url: String,
    /// The tenant's API key (printed nowhere).
    pub api_key: Secret,
    pub profile: Profile,
    /// Name of the run in reports (`black-friday`, or the profile's name).
    pub scenario: String,
    /// Random part of the user ids (`lg-{run_id}-{i}`), so a run never
    /// shares conversations with an earlier one on the same database.
    pub run_id: String,
    /// Mean pause between a reply and the user's next turn.
    pub think: Duration,
    /// The pause is uniform over `think ± think_jitter`.
    pub think_jitter: Duration,
    /// `wait` of each long-poll (whole seconds, at most 60).
    pub wait: Duration,
    /// An accepted turn not finished after this is lost.
    pub turn_timeout: Duration,
    /// Time turns in flight get to finish after the profile's end.
    pub drain_timeout: Duration,
    /// Turns per user, then the user stops (tests); `None`: until the end.
    pub max_turns: Option<u64>,
    /// The simulated LLM latency the server runs with, when known: phases
    /// then report the throughput a closed loop should reach,
    /// `users / (latency + think)`.
    pub expected_latency: Option<Duration>,
    /// The simulated provider's chunks per reply, when known (`--stream`'s
    /// first-delta overhead; see [`report::StreamReport`]).
    pub expected_chunks: Option<u32>,
    /// Priority of every submitted turn (1..=10).
    pub priority: u8,
    /// Submit with `"stream": true` and follow each turn over
    /// `GET /v1/chat/{id}/stream` instead of long-polling.
    pub stream: bool,
    /// Fetch every conversation at the end and compare it with the turns
    /// that completed.
    pub verify_transcripts: bool,
    /// Length of the soak's first and last windows compared for drift.
    pub drift_window: Duration,
    pub progress: ProgressMode,
    /// Cancelled to end the run early (Ctrl-C): users stop, turns in flight
    /// get at most [`INTERRUPTED_DRAIN`] to finish, and the report is built
    /// as usual.
    pub interrupt: CancellationToken,
}

/// The drain after an interrupt: short, someone is waiting.
pub const INTERRUPTED_DRAIN: Duration = Duration::from_secs(5);

impl RunConfig {
    /// A configuration with the defaults of the command line.
    pub fn new(base_url: &str, api_key: Secret, profile: Profile) -> RunConfig {
        RunConfig {
            base_url: base_url.to_owned(),
            api_key,
            scenario: profile.name().to_owned(),
            profile,
            run_id: new_run_id(),
            think: Duration::from_secs(3),
            think_jitter: Duration::from_secs(1),
            wait: Duration::from_secs(30),
            turn_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(60),
            max_turns: None,
            expected_latency: None,
            expected_chunks: None,
            priority: 1,
            stream: false,
            verify_transcripts: true,
            drift_window: Duration::from_secs(300),
            progress: ProgressMode::Auto {
                every: Duration::from_secs(10),
            },
            interrupt: CancellationToken::new(),
        }
    }
}

/// Eight hex characters.
pub fn new_run_id() -> String {
    let bytes: [u8; 4] = rand::random();
    hex::encode(bytes)
}

/// The live progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Off,
    /// Redrawn in place on a terminal (stderr); otherwise a plain line at
    /// most every `every`.
    Auto {
        every: Duration,
    },
}

/// Why a run could not be carried out or reported (a run that found
/// problems is not an error: its report says it failed).
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Setup(String),
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("drawing the chart: {0}")]
    Chart(String),
}

/// Writes a run's `report.json`, `summary.txt` and `chart.svg` into `dir`
/// (created if needed).
pub fn write_report(report: &report::Report, dir: &std::path::Path) -> Result<(), LoadgenError> {
    report.write(dir)?;
    chart::draw(report, &dir.join("chart.svg"))
}
