//! Every file under `sql/` and `tools/sql/` is checked against a freshly
//! migrated database,
//! so a misspelt table, column or function fails the test suite rather than
//! the process that first runs the statement.
//!
//! A file is found by walking both directories, so a new one is checked without a
//! change here. A file of one plain statement is prepared (`PREPARE`),
//! which resolves every name and type without running it; its parameters
//! get the types Postgres infers, as they do in the code. The files that
//! are not one plain statement are handled by rule or listed below with the
//! reason:
//!
//! - a psql script (a line with a backslash meta-command, or a psql
//!   variable such as `:'from'`: the audit queries) is run the way an
//!   operator runs it, with psql and `ON_ERROR_STOP`, in read-only
//!   transactions; [`PSQL_VARIABLES`] gives the variables a script cannot
//!   run without;
//! - a file of several statements is run whole in a transaction that is
//!   rolled back (it can have no bind parameters, and none has);
//! - a statement that `PREPARE` does not take is in [`EXECUTED`], run on
//!   the empty database instead.
//!
//! Every object a file names exists once the migrations have run, so no
//! file is skipped.

mod common;

use common::TestDb;
use sqlx::{Connection, Executor, PgConnection};
use std::path::{Path, PathBuf};

/// Statements `PREPARE` refuses (it takes only SELECT, INSERT, UPDATE,
/// DELETE, MERGE and VALUES), each with how it is run instead.
const EXECUTED: &[(&str, Run, &str)] = &[
    (
        "sql/admin/read_snapshot.sql",
        Run::FirstInTransaction,
        "SET TRANSACTION must be the first statement of a transaction: \
         run at the start of one, rolled back",
    ),
    (
        "sql/queue/begin_generic_plans.sql",
        Run::Begins,
        "BEGIN cannot be prepared: run alone, and the transaction it begins \
         rolled back",
    ),
    (
        "sql/queue/vacuum_jobs.sql",
        Run::Alone,
        "VACUUM cannot be prepared or run inside a transaction: run alone \
         (the database is empty)",
    ),
];

/// psql variables as `-v name=value` pairs.
type Variables = &'static [(&'static str, &'static str)];

/// psql variables a script stops without (every optional one has a default
/// in the script itself), with why.
const PSQL_VARIABLES: &[(&str, Variables, &str)] = &[(
    "sql/audit/history.sql",
    &[("user_id", "alice")],
    "needs a user or a conversation, and stops on purpose without one",
)];

#[derive(Clone, Copy, Debug)]
enum Run {
    /// Executed as the first statement of a transaction that is rolled back.
    FirstInTransaction,
    /// Executed on its own, outside any transaction.
    Alone,
    /// Executed on its own; it begins a transaction, which is rolled back.
    Begins,
}

/// The workspace's root: the library's statements are under `sql/`, the
/// tools' under `tools/sql/`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// Every `*.sql` file of the library and the tools.
fn all_sql_files() -> Vec<PathBuf> {
    let mut files = sql_files(&root().join("sql"));
    files.extend(sql_files(&root().join("tools/sql")));
    files
}

/// Every `*.sql` file under `dir`, recursively, in a stable order.
fn sql_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read sql/") {
            let path = entry.expect("read sql/").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The file's name relative to the workspace's root, with `/` separators.
fn name(path: &Path) -> String {
    let relative = path.strip_prefix(root()).expect("in the workspace");
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// A psql script: a backslash meta-command at the start of a line, or a
/// psql variable interpolated (`:'name'`, `:"name"`, `:{?name}`).
fn is_psql_script(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with('\\'))
        || text.contains(":'")
        || text.contains(":\"")
        || text.contains(":{?")
}

/// Postgres's error for several statements in one prepared statement.
fn is_multiple_commands(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.message().contains("multiple commands"))
}

/// Checks one file; the error says what failed.
async fn check(db: &TestDb, conn: &mut PgConnection, path: &Path) -> Result<(), String> {
    let name = name(path);
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if is_psql_script(&text) {
        return psql(db, &name, path).await;
    }
    if let Some((_, run, _)) = EXECUTED.iter().find(|(file, _, _)| *file == name) {
        return execute(conn, &text, *run).await.map_err(|e| e.to_string());
    }
    let statement = text.trim_end().trim_end_matches(';');
    // Sent as one extended-protocol statement, which Postgres refuses when
    // it holds several commands (a simple query would prepare the first).
    let prepare = format!("PREPARE checked AS {statement}");
    let prepared = conn.execute(sqlx::query(&prepare).persistent(false)).await;
    match prepared {
        Ok(_) => {
            conn.execute(sqlx::raw_sql("DEALLOCATE checked"))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) if is_multiple_commands(&e) => {
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            let result = tx.execute(sqlx::raw_sql(&text)).await;
            tx.rollback().await.map_err(|e| e.to_string())?;
            result.map(drop).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn execute(conn: &mut PgConnection, text: &str, run: Run) -> Result<(), sqlx::Error> {
    match run {
        Run::Alone => conn.execute(sqlx::raw_sql(text)).await.map(drop),
        Run::Begins => {
            let result = conn.execute(sqlx::raw_sql(text)).await.map(drop);
            conn.execute("ROLLBACK").await?;
            result
        }
        Run::FirstInTransaction => {
            let mut tx = conn.begin().await?;
            let result = tx.execute(sqlx::raw_sql(text)).await;
            tx.rollback().await?;
            result.map(drop)
        }
    }
}

/// Runs a psql script as an operator would, read-only.
async fn psql(db: &TestDb, name: &str, path: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg(&db.url)
        .args(["-X", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1"])
        .env("PGOPTIONS", "-c default_transaction_read_only=on");
    if let Some((_, vars, _)) = PSQL_VARIABLES.iter().find(|(file, _, _)| *file == name) {
        for (var, value) in *vars {
            cmd.arg("-v").arg(format!("{var}={value}"));
        }
    }
    cmd.arg("-f").arg(path);
    let out = cmd.output().await.expect("psql must be installed");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[tokio::test]
async fn every_sql_file_is_valid_against_the_migrated_schema() {
    let db = TestDb::with_pool_size(2).await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let files = all_sql_files();
    assert!(files.len() >= 100, "sql/ not found: {} files", files.len());
    assert!(
        files.iter().any(|f| name(f).starts_with("tools/sql/")),
        "tools/sql/ not found"
    );

    let mut failures = Vec::new();
    for path in &files {
        if let Err(e) = check(&db, &mut conn, path).await {
            failures.push(format!("{}: {e}", name(path)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} SQL files do not hold against the migrated schema:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Every file the lists name exists and is not a psql script (which the
/// rule above covers), so neither list outlives its files.
#[test]
fn the_special_cases_name_existing_files() {
    let dir = root();
    for (file, _, why) in EXECUTED {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("EXECUTED names {file} ({why}): {e}"));
        assert!(!is_psql_script(&text), "{file} is a psql script");
    }
    for (file, _, why) in PSQL_VARIABLES {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("PSQL_VARIABLES names {file} ({why}): {e}"));
        assert!(is_psql_script(&text), "{file} is not a psql script");
    }
}

// ------------------------------------------------------- plans of the hot path

/// The statements every chat turn runs, from its submission to its answer,
/// and those an API process runs on a timer (the long-polls' re-check), on
/// every replayed idempotency key, and after a lost COMMIT.
const HOT_STATEMENTS: &[&str] = &[
    "sql/chat/default_conversation.sql",
    "sql/chat/conversation_user.sql",
    "sql/queue/enqueue.sql",
    "sql/queue/claim.sql",
    "sql/chat/histories.sql",
    "sql/queue/heartbeat.sql",
    "sql/chat/append_turns.sql",
    "sql/chat/append_turns_with_model.sql",
    "sql/queue/finish.sql",
    "sql/queue/unblock.sql",
    "sql/queue/get.sql",
    "sql/queue/get_many.sql",
    "sql/queue/waiter_recheck.sql",
    "sql/queue/idempotency_lookup.sql",
    "sql/queue/stored.sql",
];

/// Tables that grow with every turn and are never emptied by the queue
/// itself: a sequential scan of one costs more with every turn served.
/// `job_history` is matched with its partitions.
const GROWING_TABLES: &[&str] = &[
    "messages",
    "conversations",
    "idempotency_keys",
    "job_history",
    "job_events",
];

/// The sequential scans of growing tables in a plan (EXPLAIN's JSON).
fn growing_scans(plan: &serde_json::Value, found: &mut Vec<String>) {
    if plan["Node Type"] == "Seq Scan" {
        let relation = plan["Relation Name"].as_str().unwrap_or_default();
        if GROWING_TABLES.iter().any(|t| relation.starts_with(t)) {
            found.push(relation.to_owned());
        }
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        growing_scans(child, found);
    }
}

/// A prepared statement keeps its generic plan, and one made while the
/// tables were empty or never analyzed (a new deployment, a server without
/// autovacuum) is kept as they grow. A sequential scan in that plan makes
/// every turn slower than the last: the hot statements must reach growing
/// tables through their indexes whatever the statistics say. (Maintenance
/// and the console's reads are left out: they run rarely or scan on purpose.)
#[tokio::test]
async fn the_hot_statements_plan_no_scan_of_a_growing_table_on_an_unanalyzed_database() {
    let db = TestDb::with_pool_size(1).await;
    let mut conn = db.pool.acquire().await.expect("connection");
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let mut failures = Vec::new();
    for file in HOT_STATEMENTS {
        let text = std::fs::read_to_string(root().join(file)).expect("read the statement");
        let statement = text.trim_end().trim_end_matches(';');
        conn.execute(sqlx::query(&format!("PREPARE planned AS {statement}")).persistent(false))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let params: i32 = sqlx::query_scalar(
            "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = 'planned'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let nulls = vec!["NULL"; params as usize].join(", ");
        let explain = if params == 0 {
            "EXPLAIN (FORMAT JSON) EXECUTE planned".to_owned()
        } else {
            format!("EXPLAIN (FORMAT JSON) EXECUTE planned({nulls})")
        };
        let plan: serde_json::Value = sqlx::query_scalar(&explain)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        conn.execute("DEALLOCATE planned").await.unwrap();
        let mut scans = Vec::new();
        growing_scans(&plan[0]["Plan"], &mut scans);
        if !scans.is_empty() {
            failures.push(format!("{file}: sequential scan of {}", scans.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
