//! A Postgres server of a test's own, on its own port in a temporary
//! directory, which the test may crash and restart (never the shared
//! server). initdb and pg_ctl come from Debian's PostgreSQL 15 packages.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A Postgres server of the test's own, which it may crash and restart.
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
    settings: Vec<String>,
}

/// Runs a Postgres tool as the `postgres` user when this process is root
/// (initdb and postgres refuse to run as root).
fn pg_tool(tool: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{PG_BIN}/{tool}");
    let output = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--", &path])
            .args(args)
            .output()
    } else {
        Command::new(&path).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    output
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePg {
    /// initdb and start a cluster with `settings` (`name=value`).
    pub fn start_new(settings: &[&str]) -> PrivatePg {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let dir =
            std::env::temp_dir().join(format!("skipjack-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let data = dir.join("data");
        let out = pg_tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePg {
            dir,
            port,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        pg.start();
        pg
    }

    pub fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        for setting in &self.settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let log = self.dir.join("log").to_str().unwrap().to_owned();
        let out = pg_tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Kills the server as a crash would: no shutdown checkpoint, so the
    /// restart runs crash recovery and empties unlogged tables.
    pub fn crash(&self) {
        let out = pg_tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// A fresh pool on the server (connections made before a crash are
    /// dead).
    pub async fn pool(&self, size: u32) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url())
            .unwrap()
            .application_name("skipjack-test")
            // Commits of the test's own sessions never wait for a standby.
            .options([("synchronous_commit", "local")]);
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("connect to the private cluster")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = pg_tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
