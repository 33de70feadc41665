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
