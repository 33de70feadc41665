//! The tools' command lines: every binary that needs a database defaults
//! to the URL scripts/run.sh sets up, as the product's binaries do.

use skipjack::db::DEFAULT_DATABASE_URL;

#[test]
fn binaries_default_to_the_database_run_sh_uses() {
    for (exe, args) in [
        (env!("CARGO_BIN_EXE_chat-bench"), vec![]),
        (env!("CARGO_BIN_EXE_skipjack-bench"), vec!["queue"]),
        (env!("CARGO_BIN_EXE_skipjack-bench"), vec!["fair"]),
        (env!("CARGO_BIN_EXE_skipjack-bench"), vec!["cancel"]),
        (env!("CARGO_BIN_EXE_skipjack-bench"), vec!["console"]),
        (env!("CARGO_BIN_EXE_skipjack-bench"), vec!["horizon"]),
    ] {
        let out = std::process::Command::new(exe)
            .args(&args)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("[default: {DEFAULT_DATABASE_URL}]")),
            "{exe} {args:?} --help: {help}"
        );
    }
}

fn server_url() -> String {
    std::env::var("SKIPJACK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `skipjack-bench ARGS --json` against the test server; its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skipjack-bench"))
        .args(args)
        .arg("--json")
        .env("DATABASE_URL", server_url())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skipjack-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A small drain by two worker processes, with the raw ceiling after it:
/// every job drained once, the processes' CPU counted, the work counters
/// and the ceiling reported.
#[test]
fn the_queue_bench_drains_with_worker_processes_and_measures_the_raw_ceiling() {
    let db = format!("skipjack_test_bench_{}", uuid::Uuid::now_v7().simple());
    let r = bench_json(&[
        "queue",
        "--jobs",
        "3000",
        "--single-jobs",
        "64",
        "--pickup-samples",
        "5",
        "--processes",
        "2",
        "--raw-ceiling",
        "--bench-database",
        &db,
    ]);
    assert_eq!(r["processes"], 2);
    assert_eq!(r["drained_jobs"], 3064, "{r}");
    assert!(r["drain_jobs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let work = &r["drain_work"];
    // Every drained job was deleted from `jobs` once and inserted into
    // history once (the pickup jobs come after the counters).
    assert_eq!(work["heap_deleted"].as_f64(), Some(1.0), "{r}");
    assert!(work["worker_cpu_us"].as_f64().unwrap() > 0.0, "{r}");
    assert!(work["transactions"].as_f64().unwrap() > 0.0, "{r}");
    assert!(work["wal_bytes"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["raw"]["jobs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["raw"]["wal_bytes"].as_f64().unwrap() > 0.0, "{r}");
}

/// The horizon bench with a few jobs: every window reported, both drains
/// measured, the dead rows the held snapshot kept counted.
#[test]
fn the_horizon_bench_reports_every_window_and_both_drains() {
    let db = format!("skipjack_test_horizon_{}", uuid::Uuid::now_v7().simple());
    let r = bench_json(&[
        "horizon",
        "--jobs",
        "40",
        "--window",
        "20",
        "--drain-jobs",
        "500",
        "--bench-database",
        &db,
    ]);
    let windows = r["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{r}");
    assert_eq!(windows[1]["after_jobs"], 20);
    assert!(r["clean_drain_jobs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["held_drain_jobs_per_s"].as_f64().unwrap() > 0.0, "{r}");
}
