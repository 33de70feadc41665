//! The supported PgBouncer layout, end to end through a real PgBouncer
//! started by the test in transaction mode (with protocol-level prepared
//! statements, `max_prepared_statements`) in front of the local Postgres:
//! every query of the API and the workers goes through it, and LISTEN, the
//! session advisory locks and maintenance go to Postgres directly (the
//! direct pool). Chat turns complete, in order, without a single retry.
//!
//! Needs PgBouncer >= 1.21 (`SKIPJACK_PGBOUNCER`, /usr/local/bin, PATH, or
//! /usr/sbin; `scripts/pgbouncer.sh` installs one); skipped loudly when
//! there is none at all.

mod common;
mod common_stack;

use common::{eventually, TestDb};
use common_stack::{find_binary, free_port, is_root, Stack, TempDir};
use skipjack::db::{self, DbConfig};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A PgBouncer of the test's own, stopped on drop.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

/// The PgBouncer binary and its version, or `None` when there is none.
fn pgbouncer() -> Option<(PathBuf, (u32, u32))> {
    let env = std::env::var("SKIPJACK_PGBOUNCER").ok();
    let mut candidates: Vec<&str> = env.iter().map(String::as_str).collect();
    candidates.extend(["/usr/local/bin/pgbouncer", "/usr/local/sbin/pgbouncer"]);
    let path = find_binary("pgbouncer", &candidates)
        .or_else(|| find_binary("pgbouncer", &["/usr/sbin/pgbouncer"]))?;
    let output = Command::new(&path).arg("--version").output().ok()?;
    // "PgBouncer 1.24.1" on the first line.
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Some((path, (parts.next()?, parts.next().unwrap_or(0))))
}

impl Bouncer {
    /// PgBouncer in transaction mode in front of the local Postgres.
    async fn start() -> Option<Bouncer> {
        let Some((binary, version)) = pgbouncer() else {
            assert!(
                std::env::var_os("SKIPJACK_TEST_REQUIRE_ALL").is_none(),
                "no pgbouncer: scripts/test.sh should have installed one"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: no pgbouncer (scripts/pgbouncer.sh installs one) !!!!!!!!\n"
            );
            return None;
        };
        assert!(
            version >= (1, 21),
            "{} is PgBouncer {}.{}: transaction pooling with prepared statements needs >= 1.21 \
             (scripts/pgbouncer.sh builds one)",
            binary.display(),
            version.0,
            version.1
        );
        let admin = url::Url::parse(&common::admin_url()).unwrap();
        let dir = TempDir::new("skipjack-pgbouncer");
        let port = free_port();
        let user = admin.username();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let config = format!(
            "[databases]\n\
             * = host={host} port={pg_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             max_prepared_statements = 200\n\
             default_pool_size = 8\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits, options\n\
             logfile = {dir}/pgbouncer.log\n",
            host = admin.host_str().unwrap_or("127.0.0.1"),
            pg_port = admin.port().unwrap_or(5432),
            dir = dir.path().display(),
        );
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini, config).unwrap();
        // PgBouncer refuses to run as root: started as root, it switches
        // to `postgres` itself (`-u`), so the child stays PgBouncer.
        let mut command = Command::new(&binary);
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        eventually(Duration::from_secs(20), "pgbouncer listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Some(Bouncer {
            child,
            port,
            _dir: dir,
        })
    }

    /// `db`'s URL through PgBouncer.
    fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        // PgBouncer here offers no TLS to its clients.
        url.query_pairs_mut().append_pair("sslmode", "disable");
        url.to_string()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn db_config(url: &str, pool_size: u32, name: &str) -> DbConfig {
    DbConfig {
        url: url.to_owned(),
        pool_size,
        acquire_timeout: Duration::from_secs(10),
        application_name: name.to_owned(),
    }
}

async fn connect(url: &str, pool_size: u32, name: &str) -> PgPool {
    db::connect(&db_config(url, pool_size, name)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_turns_run_through_pgbouncer_in_transaction_mode_with_a_direct_pool() {
    const USERS: usize = 8;
    const TURNS: usize = 6;
    let Some(bouncer) = Bouncer::start().await else {
        return;
    };
    let db = TestDb::new().await;
    let pooled_url = bouncer.url(&db);
    // More client connections than PgBouncer has server connections (8):
    // transactions of different clients share server sessions.
    let pooled = connect(&pooled_url, 24, "skipjack-pgbouncer-test").await;
    db::check_schema(&pooled).await.unwrap();
    let direct = connect(&db.url, 4, "skipjack-direct-test").await;
    let stack = Stack::start(pooled.clone(), direct.clone(), 2).await;
    // The API's LISTEN connection (direct) hears its own probe.
    let api_listening = || async { stack_listening(&stack) };
    eventually(Duration::from_secs(20), "API listening", api_listening).await;

    // Every user submits all their turns at once into one conversation;
    // users run side by side.
    let submitted: Vec<(String, Vec<String>)> =
        futures_util::future::join_all((0..USERS).map(|u| {
            let stack = &stack;
            async move {
                let user = format!("user-{u}");
                let first = stack.submit(&user, None, &format!("u{u} turn 0")).await;
                let conversation = first["conversation_id"].as_str().unwrap().to_owned();
                let mut ids = vec![first["job_id"].as_str().unwrap().to_owned()];
                for k in 1..TURNS {
                    let job = stack
                        .submit(&user, Some(&conversation), &format!("u{u} turn {k}"))
                        .await;
                    ids.push(job["job_id"].as_str().unwrap().to_owned());
                }
                (conversation, ids)
            }
        }))
        .await;
    // Long-poll every job to its end through the API.
    for (u, (conversation, ids)) in submitted.iter().enumerate() {
        for (k, id) in ids.iter().enumerate() {
            let done = stack.wait_done(id, Duration::from_secs(60)).await;
            assert_eq!(done["status"], "completed", "{done}");
            assert_eq!(done["attempts"], 1, "no attempt failed: {done}");
            // The reply saw the whole history before it, in order.
            assert_eq!(
                done["response"],
                format!("echo({}): u{u} turn {k}", 2 * k + 1)
            );
        }
        let messages = stack.messages(conversation).await;
        let expected: Vec<(String, String)> = (0..TURNS)
            .flat_map(|k| {
                [
                    ("user".to_owned(), format!("u{u} turn {k}")),
                    (
                        "assistant".to_owned(),
                        format!("echo({}): u{u} turn {k}", 2 * k + 1),
                    ),
                ]
            })
            .collect();
        assert_eq!(messages, expected, "conversation {u} in order");
    }

    // The session state lives on the direct connections: the LISTENs of the
    // API and the workers, and the gauges leader's lock.
    let session_state = || async {
        let (listening, locks): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() \
                       AND application_name LIKE 'skipjack-direct-test-%'), \
                    (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                     WHERE l.locktype = 'advisory' \
                       AND a.application_name = 'skipjack-direct-test')",
        )
        .fetch_one(&direct)
        .await
        .unwrap();
        // The LISTEN sessions (named after their pool, `-listener` and the
        // like) of the API (long-polls and streams) and of each worker; the
        // gauges leader's lock.
        listening == 4 && locks == 1
    };
    eventually(
        Duration::from_secs(20),
        "four LISTENs and the gauges lock on direct connections",
        session_state,
    )
    .await;
    stack.stop().await;
}

fn stack_listening(stack: &Stack) -> bool {
    stack.api().state().long_poll.is_listening()
}

/// Why the direct pool exists: a LISTEN sent through PgBouncer in
/// transaction mode stays on whichever server session ran it, which goes
/// back to the pool; the listener never hears a NOTIFY, and the
/// notifications land in other clients' statements instead (control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_through_transaction_pooling_hears_nothing_and_direct_does() {
    let Some(bouncer) = Bouncer::start().await else {
        return;
    };
    let db = TestDb::new().await;
    let pooled = connect(&bouncer.url(&db), 4, "skipjack-pgbouncer-test").await;
    let mut through_bouncer = PgListener::connect_with(&pooled).await.unwrap();
    through_bouncer.listen("skipjack_test").await.unwrap();
    let mut direct = PgListener::connect_with(&db.pool).await.unwrap();
    direct.listen("skipjack_test").await.unwrap();
    // Other clients' statements through PgBouncer: they run on the server
    // session that holds the LISTEN, too.
    let mut broken = 0;
    for _ in 0..20 {
        if sqlx::query("SELECT pg_notify('skipjack_test', 'hello')")
            .execute(&pooled)
            .await
            .is_err()
        {
            broken += 1;
        }
    }
    sqlx::query("SELECT pg_notify('skipjack_test', 'direct')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut heard = Vec::new();
    while heard.last().map(String::as_str) != Some("direct") {
        let n = tokio::time::timeout(Duration::from_secs(10), direct.recv())
            .await
            .expect("the direct listener hears every NOTIFY")
            .unwrap();
        heard.push(n.payload().to_owned());
    }
    // (A statement that failed on a stray notification had sent its own.)
    assert_eq!(heard.len(), 21, "{heard:?}");
    // By now every NOTIFY has been sent to every listening session. A round
    // trip on the listener's own connection comes back after anything its
    // server session had sent before: none came through PgBouncer.
    sqlx::query("SELECT 1")
        .execute(&mut through_bouncer)
        .await
        .unwrap();
    let through = through_bouncer.next_buffered();
    assert!(through.is_none(), "heard through PgBouncer: {through:?}");
    eprintln!("{broken} of 20 statements through PgBouncer failed on a stray notification");
}
