//! `loadgen`: virtual chat users against a skipjack API (see
//! `skipjack_tools::loadgen`). Prints the summary on stdout, writes the report
//! directory, and exits 1 when the run found problems.

use clap::Parser;
use skipjack_tools::loadgen::args::ProfileCommand;
use skipjack_tools::loadgen::{self, LoadgenArgs, Report};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    skipjack::telemetry::init();
    let args = LoadgenArgs::parse();
    if let ProfileCommand::Replot { dir } = &args.profile {
        let chart = dir.join("chart.svg");
        return match Report::read(dir).and_then(|report| loadgen::chart::draw(&report, &chart)) {
            Ok(()) => {
                eprintln!("loadgen: redrew {}", chart.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut config = match args.run_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C or SIGTERM: stop early, still report.
    config.interrupt = skipjack::signal::shutdown_token();
    let dir = args.report_dir(&config.scenario);
    eprintln!(
        "loadgen: {} against {} (run {}), report in {}",
        config.profile.describe(),
        config.base_url,
        config.run_id,
        dir.display()
    );
    let report = match loadgen::run(config).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.summary());
    if let Err(e) = loadgen::write_report(&report, &dir) {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    eprintln!("loadgen: report written to {}", dir.display());
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
