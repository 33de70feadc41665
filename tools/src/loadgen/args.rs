//! The `loadgen` command line: common settings (each also an environment
//! variable) and one subcommand per profile.

use super::profile::{parse_duration, Profile};
use super::{new_run_id, ProgressMode, RunConfig};
use clap::{Parser, Subcommand};
use skipjack::llm::settings::Secret;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Virtual chat users against a skipjack API.
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "skipjack load generator: virtual chat users that submit, long-poll (or stream), check every reply and report",
    after_help = "Exit status: 0 when the run passed, 1 when it found errors, lost turns or integrity mismatches, 2 when it could not run."
)]
pub struct LoadgenArgs {
    /// The API's base URL.
    #[arg(
        long,
        global = true,
        env = "SKIPJACK_LOADGEN_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// The tenant's API key. Use the environment: a flag shows in `ps`.
    #[arg(long, global = true, env = "SKIPJACK_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Mean think time between a reply and the next turn (e.g. 3s, 500ms).
    #[arg(long, global = true, env = "SKIPJACK_LOADGEN_THINK", default_value = "3s", value_parser = parse_duration)]
    pub think: Duration,
    /// Think time is uniform over think ± this.
    #[arg(long, global = true, env = "SKIPJACK_LOADGEN_THINK_JITTER", default_value = "1s", value_parser = parse_duration)]
    pub think_jitter: Duration,
    /// Long-poll wait of each GET, in seconds (1..=60).
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub wait: u64,
    /// An accepted turn not finished after this counts as lost.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_duration)]
    pub turn_timeout: Duration,
    /// Time in-flight turns get to finish after the profile ends.
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Turns per user, after which the user stops.
    #[arg(long, global = true)]
    pub turns: Option<u64>,
    /// The server's simulated LLM latency, for the expected throughput in
    /// the report (users / (latency + think)).
    #[arg(long, global = true, env = "SKIPJACK_SIMULATED_LATENCY_MS", value_parser = parse_millis)]
    pub expected_latency_ms: Option<Duration>,
    /// The server's simulated chunks per reply, for `--stream`'s first-delta
    /// overhead (the first chunk comes latency / chunks after the start);
    /// without it, the number of deltas of each turn's last attempt.
    #[arg(long, global = true, env = "SKIPJACK_SIMULATED_CHUNKS", value_parser = clap::value_parser!(u32).range(1..))]
    pub expected_chunks: Option<u32>,
    /// Submit with `"stream": true` and follow each turn over
    /// `GET /v1/chat/{id}/stream` (Server-Sent Events, reconnecting with
    /// `Last-Event-ID`) instead of long-polling.
    #[arg(long, global = true)]
    pub stream: bool,
    /// Priority of the submitted turns (1..=10).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub priority: u8,
    /// Name of the run in the report and the default report directory.
    #[arg(long, global = true)]
    pub scenario: Option<String>,
    /// Where the report goes; default reports/<scenario>-<timestamp>/.
    #[arg(long, global = true, env = "SKIPJACK_LOADGEN_REPORT_DIR")]
    pub report_dir: Option<PathBuf>,
    /// Off a terminal, print the progress line at most this often (0 = never).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub progress_every: Duration,
    /// No progress line at all.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Skip fetching every conversation at the end to compare it with the
    /// completed turns.
    #[arg(long, global = true)]
    pub no_verify_transcripts: bool,
    /// Soak: length of the first and last windows compared for drift.
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    pub drift_window: Duration,
    #[command(subcommand)]
    pub profile: ProfileCommand,
}

/// The load profile (or `replot`).
#[derive(Subcommand, Debug, Clone)]
pub enum ProfileCommand {
    /// Redraw chart.svg of an earlier run from its report.json (no load is
    /// generated).
    Replot {
        /// The run's report directory.
        dir: PathBuf,
    },
    /// N users for a duration.
    Steady {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// From A users to B users, linearly, over a duration.
    Ramp {
        #[arg(long, default_value_t = 10)]
        from: usize,
        #[arg(long, default_value_t = 1000)]
        to: usize,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// A users, then B users at time T for a while, then A users again.
    Spike {
        /// Users before and after the spike.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Users during the spike.
        #[arg(long, default_value_t = 1000)]
        peak: usize,
        /// When the spike starts.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        at: Duration,
        /// How long it lasts.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        hold: Duration,
        /// Time at the base load after the spike.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        after: Duration,
    },
    /// Steady for a long time, with interim reports and drift.
    Soak {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        duration: Duration,
        /// Interim report period.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        report_every: Duration,
    },
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))
}

impl ProfileCommand {
    /// The profile to run; `None` for `replot`.
    pub fn profile(&self) -> Option<Profile> {
        Some(match *self {
            ProfileCommand::Replot { .. } => return None,
            ProfileCommand::Steady { users, duration } => Profile::Steady { users, duration },
            ProfileCommand::Ramp { from, to, duration } => Profile::Ramp { from, to, duration },
            ProfileCommand::Spike {
                users,
                peak,
                at,
                hold,
                after,
            } => Profile::Spike {
                users,
                peak,
                at,
                hold,
                after,
            },
            ProfileCommand::Soak {
                users,
                duration,
                report_every,
            } => Profile::Soak {
                users,
                duration,
                report_every,
            },
        })
    }
}

impl LoadgenArgs {
    /// The run's configuration; fails without an API key (or for
    /// `replot`, which runs nothing).
    pub fn run_config(&self) -> Result<RunConfig, String> {
        let profile = self.profile.profile().ok_or("replot runs no load")?;
        let api_key = self.api_key.clone().ok_or(
            "no API key: set SKIPJACK_API_KEY (e.g. KEY=$(skipjack tenants create loadgen))",
        )?;
        Ok(RunConfig {
            base_url: self.url.clone(),
            api_key,
            scenario: self
                .scenario
                .clone()
                .unwrap_or_else(|| profile.name().to_owned()),
            profile,
            run_id: new_run_id(),
            think: self.think,
            think_jitter: self.think_jitter.min(self.think),
            wait: Duration::from_secs(self.wait),
            turn_timeout: self.turn_timeout,
            drain_timeout: self.drain_timeout,
            max_turns: self.turns,
            expected_latency: self.expected_latency_ms,
            expected_chunks: self.expected_chunks,
            priority: self.priority,
            stream: self.stream,
            verify_transcripts: !self.no_verify_transcripts,
            drift_window: self.drift_window,
            progress: if self.quiet {
                ProgressMode::Off
            } else {
                ProgressMode::Auto {
                    every: self.progress_every,
                }
            },
            interrupt: CancellationToken::new(),
        })
    }

    /// The report directory: the flag, or `reports/<scenario>-<timestamp>/`.
    pub fn report_dir(&self, scenario: &str) -> PathBuf {
        self.report_dir.clone().unwrap_or_else(|| {
            PathBuf::from("reports").join(format!(
                "{scenario}-{}",
                chrono::Utc::now().format("%Y%m%d-%H%M%S")
            ))
        })
    }
}
