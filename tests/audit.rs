//! The audit queries in `sql/audit/`, run the way an auditor runs them
//! (`psql -v name=value -f file`) against a database seeded through the
//! real queue API: completed, retried, cancelled, failed, rescued and stuck
//! jobs of two tenants. Every file is run and its rows checked, and so are
//! the runbook's repair statements for stuck conversations.

mod common;

use chrono::{DateTime, Utc};
use common::TestDb;
use serde_json::json;
use skipjack::chat::{self, ChatPayload, CHAT_KIND};
use skipjack::ids::{ConversationId, JobId, TenantId};
use skipjack::queue::{
    self, Backoff, ClaimedJob, FinishItem, JobState, NewJob, Outcome, Priority, TokenUsage,
};
use skipjack::tenants;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

const WORKER: &str = "w-audit";
const LEASE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

type Row = BTreeMap<String, String>;

/// Runs `file` (relative to the repository) with psql and `vars`; the rows
/// of its last result, or psql's exit code and stderr.
async fn psql(db: &TestDb, file: &str, vars: &[(&str, &str)]) -> Result<Vec<Row>, (i32, String)> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg(&db.url)
        .args(["-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"])
        .env_remove("PGOPTIONS");
    for (name, value) in vars {
        cmd.arg("-v").arg(format!("{name}={value}"));
    }
    cmd.arg("-f").arg(repo().join(file));
    let out = cmd.output().await.expect("psql must be installed");
    if !out.status.success() {
        return Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(parse_csv(&String::from_utf8(out.stdout).unwrap()))
}

async fn run(db: &TestDb, file: &str, vars: &[(&str, &str)]) -> Vec<Row> {
    psql(db, file, vars)
        .await
        .unwrap_or_else(|(code, err)| panic!("{file} failed ({code}): {err}"))
}

/// CSV as psql writes it: a header line, then rows; quoted fields may hold
/// commas, doubled quotes and newlines. A file with several results (a
/// repair script's BEGIN/UPDATE/COMMIT print nothing with -q) yields the
/// rows of the last header seen.
fn parse_csv(text: &str) -> Vec<Row> {
    let mut records: Vec<Vec<String>> = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) => quoted = true,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    let Some((header, rows)) = records.split_first() else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
        .collect()
}

fn col<'a>(row: &'a Row, name: &str) -> &'a str {
    row.get(name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

/// What the seed created, by name.
struct Seed {
    acme: TenantId,
    jobs: HashMap<&'static str, JobId>,
    conversations: HashMap<&'static str, ConversationId>,
    /// The start of the hour the timed jobs were moved into.
    base: DateTime<Utc>,
}

impl Seed {
    fn job(&self, name: &str) -> String {
        self.jobs[name].to_string()
    }

    fn conversation(&self, name: &str) -> String {
        self.conversations[name].to_string()
    }
}

fn chat_job(tenant: TenantId, conversation: ConversationId, user: &str, message: &str) -> NewJob {
    let payload = ChatPayload {
        user_id: user.to_owned(),
        message: message.to_owned(),
        metadata: None,
        stream: false,
    };
    NewJob::new(CHAT_KIND, serde_json::to_value(payload).unwrap())
        .with_tenant(tenant)
        .with_conversation(conversation)
}

async fn enqueue(pool: &PgPool, job: NewJob) -> JobId {
    let mut conn = pool.acquire().await.unwrap();
    let e = queue::enqueue(&mut conn, &job).await.unwrap();
    assert!(e.inserted);
    e.id
}

/// Claims exactly one job and checks that it is `expected`.
async fn claim(pool: &PgPool, expected: JobId) -> ClaimedJob {
    let mut claimed = queue::claim(pool, WORKER, 1, LEASE, &[CHAT_KIND.to_owned()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "expected to claim {expected}");
    let job = claimed.remove(0);
    assert_eq!(job.id, expected);
    job
}

async fn finish(pool: &PgPool, job: &ClaimedJob, outcome: Outcome) -> Option<JobState> {
    let item = FinishItem {
        job: job.id,
        attempt: job.attempt,
        outcome: &outcome,
    };
    // No backoff of its own, so a `Retry-After` of zero re-queues at once,
    // and a cap past the seeded hour-long `Retry-After`.
    let backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::from_secs(7200),
    };
    queue::finish(pool, WORKER, &[item], &backoff)
        .await
        .unwrap()
        .remove(0)
}

fn completed(response: &str, input: i32, output: i32) -> Outcome {
    Outcome::Completed {
        result: json!({"response": response, "model": "simulated"}),
        usage: Some(TokenUsage {
            input_tokens: input,
            output_tokens: output,
        }),
    }
}

fn retry(error: &str, after: Duration) -> Outcome {
    Outcome::Retry {
        error: error.to_owned(),
        retry_after: Some(after),
    }
}

async fn exec(pool: &PgPool, sql: &str, id: impl ToString) {
    sqlx::query(sql)
        .bind(uuid::Uuid::parse_str(&id.to_string()).unwrap())
        .execute(pool)
        .await
        .unwrap();
}

/// Two tenants, nine conversations and ten tenant-less jobs, through the
/// queue API; then a few timestamps moved so that times are exact.
async fn seed(pool: &PgPool) -> Seed {
    let acme = tenants::create_tenant(pool, "acme", None).await.unwrap();
    let globex = tenants::create_tenant(pool, "globex", None).await.unwrap();
    let mut conversations = HashMap::new();
    for (name, tenant, user) in [
        ("A", acme, "alice"),
        ("B", acme, "bob"),
        ("C", globex, "alice"),
        ("D", globex, "carol"),
        ("E", acme, "dave"),
        ("F", acme, "erin"),
        ("G", acme, "frank"),
        ("H", acme, "grace"),
        ("I", acme, "heidi"),
    ] {
        let mut conn = pool.acquire().await.unwrap();
        let id = chat::store::default_conversation(&mut conn, tenant, user)
            .await
            .unwrap();
        conversations.insert(name, id);
    }
    let c = |name: &str| conversations[name];
    let mut jobs = HashMap::new();

    // A (acme/alice): completed; retried then completed; cancelled.
    let a1 = enqueue(pool, chat_job(acme, c("A"), "alice", "hello")).await;
    let job = claim(pool, a1).await;
    assert_eq!(
        finish(pool, &job, completed("echo(1): hello", 10, 20)).await,
        Some(JobState::Completed)
    );
    let a2 = enqueue(pool, chat_job(acme, c("A"), "alice", "how are you")).await;
    let job = claim(pool, a2).await;
    let outcome = retry("upstream 503 Service Unavailable", Duration::ZERO);
    assert_eq!(finish(pool, &job, outcome).await, Some(JobState::Queued));
    let job = claim(pool, a2).await;
    assert_eq!(job.attempt, 2);
    finish(pool, &job, completed("echo(3): how are you", 30, 40)).await;
    let a3 = enqueue(pool, chat_job(acme, c("A"), "alice", "bye")).await;
    queue::cancel(pool, a3, Some(acme), "cancelled by the client")
        .await
        .unwrap();

    // B (acme/bob): a permanent failure at priority 5.
    let b1 = enqueue(
        pool,
        chat_job(acme, c("B"), "bob", "please").with_priority(Priority::new(5).unwrap()),
    )
    .await;
    let job = claim(pool, b1).await;
    let outcome = Outcome::Failed {
        error: "invalid request: 400 Bad Request".into(),
    };
    assert_eq!(finish(pool, &job, outcome).await, Some(JobState::Failed));

    // C (globex/alice): retried, then its worker died on the last attempt.
    let c1 = enqueue(
        pool,
        chat_job(globex, c("C"), "alice", "hallo").with_max_attempts(2),
    )
    .await;
    let job = claim(pool, c1).await;
    finish(pool, &job, retry("timeout after 30s", Duration::ZERO)).await;
    claim(pool, c1).await;
    exec(
        pool,
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        c1,
    )
    .await;
    let rescued = queue::rescue(pool, 100).await.unwrap();
    assert_eq!(rescued.failed, vec![c1]);

    // A job of no tenant, cancelled before it ran.
    let x1 = enqueue(
        pool,
        NewJob::new(CHAT_KIND, json!({"message": "never mind"})),
    )
    .await;
    queue::cancel(pool, x1, None, "cancelled by an operator")
        .await
        .unwrap();

    // Ten jobs of no tenant at priority 3, completed, 100/50 tokens each.
    let mut bulk = Vec::new();
    for i in 0..10 {
        let payload = json!({"user_id": "batch", "message": format!("job {i}")});
        let job = NewJob::new(CHAT_KIND, payload).with_priority(Priority::new(3).unwrap());
        bulk.push(enqueue(pool, job).await);
    }
    let claimed = queue::claim(pool, WORKER, 10, LEASE, &[CHAT_KIND.to_owned()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    for job in &claimed {
        finish(pool, job, completed("done", 100, 50)).await;
    }

    // E (acme/dave): processing for an hour, lease renewed (a hung call).
    let e1 = enqueue(pool, chat_job(acme, c("E"), "dave", "long one")).await;
    claim(pool, e1).await;
    exec(
        pool,
        "UPDATE jobs SET started_at = now() - interval '1 hour', \
         lease_expires_at = now() + interval '1 hour' WHERE id = $1",
        e1,
    )
    .await;

    // D (globex/carol): its worker died; a second turn waits behind it.
    let d1 = enqueue(pool, chat_job(globex, c("D"), "carol", "stuck")).await;
    claim(pool, d1).await;
    let d2 = enqueue(pool, chat_job(globex, c("D"), "carol", "anyone?")).await;
    exec(
        pool,
        "UPDATE jobs SET lease_expires_at = now() - interval '1 minute' WHERE id = $1",
        d1,
    )
    .await;

    // G (acme/frank): retried with a long Retry-After.
    let g1 = enqueue(
        pool,
        chat_job(acme, c("G"), "frank", "rate limited").with_priority(Priority::new(10).unwrap()),
    )
    .await;
    let job = claim(pool, g1).await;
    let outcome = retry("429 Too Many Requests", Duration::from_secs(3600));
    assert_eq!(finish(pool, &job, outcome).await, Some(JobState::Queued));

    // F (acme/erin): queued for ten minutes.
    let f1 = enqueue(pool, chat_job(acme, c("F"), "erin", "hello?")).await;
    exec(
        pool,
        "UPDATE jobs SET created_at = now() - interval '10 minutes' WHERE id = $1",
        f1,
    )
    .await;
    // H (acme/grace): its only turn blocked (an inconsistency).
    let h1 = enqueue(pool, chat_job(acme, c("H"), "grace", "hi")).await;
    exec(pool, "UPDATE jobs SET blocked = true WHERE id = $1", h1).await;
    // I (acme/heidi): its live-turn count is off (an inconsistency).
    enqueue(pool, chat_job(acme, c("I"), "heidi", "hey")).await;
    exec(
        pool,
        "UPDATE conversation_queues SET live_jobs = 3 WHERE conversation_id = $1",
        c("I"),
    )
    .await;

    // Exact times for the percentiles and the throughput: bulk job i
    // (1..=10) is submitted at base + i minutes, waits i s and runs 2i s.
    let base: DateTime<Utc> =
        sqlx::query_scalar("SELECT date_trunc('hour', now()) - interval '1 hour'")
            .fetch_one(pool)
            .await
            .unwrap();
    for (i, id) in bulk.iter().enumerate() {
        let i = i as f64 + 1.0;
        sqlx::query(
            "UPDATE job_history SET created_at = $2 + make_interval(mins => $3::int), \
             started_at = $2 + make_interval(mins => $3::int, secs => $3), \
             finished_at = $2 + make_interval(mins => $3::int, secs => 3 * $3) WHERE id = $1",
        )
        .bind(id)
        .bind(base)
        .bind(i)
        .execute(pool)
        .await
        .unwrap();
    }
    // B1 failed and X1 was cancelled in minute 12.
    sqlx::query(
        "UPDATE job_history SET created_at = $2 + interval '12 minutes', \
         started_at = $2 + interval '12 minutes 1 second', \
         finished_at = $2 + interval '12 minutes 5 seconds' WHERE id = $1",
    )
    .bind(b1)
    .bind(base)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE job_history SET created_at = $2 + interval '12 minutes', \
         finished_at = $2 + interval '12 minutes 10 seconds' WHERE id = $1",
    )
    .bind(x1)
    .bind(base)
    .execute(pool)
    .await
    .unwrap();

    for (name, id) in [
        ("A1", a1),
        ("A2", a2),
        ("A3", a3),
        ("B1", b1),
        ("C1", c1),
        ("D1", d1),
        ("D2", d2),
        ("E1", e1),
        ("F1", f1),
        ("G1", g1),
        ("H1", h1),
    ] {
        jobs.insert(name, id);
    }
    Seed {
        acme,
        jobs,
        conversations,
        base,
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

#[tokio::test]
async fn every_audit_query_answers_from_the_seeded_history() {
    let db = TestDb::new().await;
    let s = seed(&db.pool).await;
    let mut checked = BTreeSet::new();
    let mut check = |file: &str| {
        checked.insert(file.to_owned());
        format!("sql/audit/{file}")
    };

    // history.sql: a user (in one tenant or all), a conversation.
    let f = check("history.sql");
    let rows = run(&db, &f, &[("tenant", "acme"), ("user_id", "alice")]).await;
    let ids: Vec<&str> = rows.iter().map(|r| col(r, "job_id")).collect();
    assert_eq!(ids, [s.job("A1"), s.job("A2"), s.job("A3")]);
    let a1 = &rows[0];
    assert_eq!(col(a1, "state"), "completed");
    assert_eq!(col(a1, "tenant"), "acme");
    assert_eq!(col(a1, "message"), "hello");
    assert_eq!(col(a1, "response"), "echo(1): hello");
    assert_eq!(col(a1, "attempts"), "1");
    assert_eq!(
        (col(a1, "input_tokens"), col(a1, "output_tokens")),
        ("10", "20")
    );
    assert_eq!(col(a1, "worker"), WORKER);
    assert!(col(a1, "wait_s").parse::<f64>().unwrap() >= 0.0);
    assert_eq!(col(&rows[1], "attempts"), "2");
    assert_eq!(col(&rows[1], "output_tokens"), "40");
    assert_eq!(col(&rows[2], "state"), "cancelled");
    assert_eq!(col(&rows[2], "error"), "cancelled by the client");
    // The same user id in another tenant is another person.
    let rows = run(&db, &f, &[("user_id", "alice")]).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().any(|r| col(r, "job_id") == s.job("C1")));
    let acme_id = s.acme.to_string();
    let rows = run(&db, &f, &[("tenant", &acme_id), ("user_id", "alice")]).await;
    assert_eq!(rows.len(), 3, "a tenant id works as well as its name");
    // A conversation's live turns.
    let rows = run(&db, &f, &[("conversation", &s.conversation("D"))]).await;
    let states: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (col(r, "message"), col(r, "state")))
        .collect();
    assert_eq!(states, [("stuck", "processing"), ("anyone?", "queued")]);
    assert_eq!(col(&rows[1], "wait_s"), "", "not started yet");
    assert_eq!(
        run(&db, &f, &[("user_id", "alice"), ("limit", "1")])
            .await
            .len(),
        1
    );
    // Neither a user nor a conversation: an error, not every job.
    let (code, err) = psql(&db, &f, &[]).await.unwrap_err();
    assert_eq!(code, 3);
    assert!(err.contains("needs -v user_id"), "{err}");

    // failures.sql
    let f = check("failures.sql");
    let rows = run(&db, &f, &[]).await;
    let ids: Vec<&str> = rows.iter().map(|r| col(r, "job_id")).collect();
    assert_eq!(ids, [s.job("C1"), s.job("B1")], "newest first");
    let c1 = &rows[0];
    assert_eq!(col(c1, "tenant"), "globex");
    assert_eq!((col(c1, "attempts"), col(c1, "max_attempts")), ("2", "2"));
    assert_eq!(col(c1, "final_error"), "lease expired on attempt 2 of 2");
    assert_eq!((col(c1, "retries"), col(c1, "rescues")), ("1", "1"));
    assert_eq!(
        col(c1, "earlier_errors"),
        "attempt 1 retried: timeout after 30s\nattempt 2 rescued: lease expired"
    );
    let b1 = &rows[1];
    assert_eq!(col(b1, "final_error"), "invalid request: 400 Bad Request");
    assert_eq!((col(b1, "attempts"), col(b1, "retries")), ("1", "0"));
    assert_eq!(col(b1, "earlier_errors"), "");
    let rows = run(&db, &f, &[("tenant", "globex")]).await;
    assert_eq!(rows.len(), 1);
    let rows = run(&db, &f, &[("to", &ts(s.base + chrono::Duration::hours(1)))]).await;
    assert_eq!(rows.len(), 1, "only B1 finished in the base hour");

    // latency_percentiles.sql over the base hour.
    let f = check("latency_percentiles.sql");
    let hour = [
        ("from", ts(s.base)),
        ("to", ts(s.base + chrono::Duration::hours(1))),
    ];
    let vars: Vec<(&str, &str)> = hour.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rows = run(&db, &f, &vars).await;
    let got: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| {
            [
                "priority",
                "jobs",
                "wait_p50_s",
                "wait_p95_s",
                "wait_p99_s",
                "run_p50_s",
                "run_p95_s",
                "run_p99_s",
            ]
            .iter()
            .map(|c| col(r, c))
            .collect()
        })
        .collect();
    assert_eq!(
        got,
        [
            // B1: waited 1 s, ran 4 s. (X1, cancelled unstarted, is left out.)
            vec!["5", "1", "1.000", "1.000", "1.000", "4.000", "4.000", "4.000"],
            // Waits 1..10 s, runs 2..20 s.
            vec!["3", "10", "5.500", "9.550", "9.910", "11.000", "19.100", "19.820"],
        ]
    );
    let hour_utc = s.base.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string();
    assert!(rows.iter().all(|r| col(r, "hour_utc") == hour_utc));

    // throughput.sql over the first quarter of the base hour.
    let f = check("throughput.sql");
    let from = ts(s.base);
    let to = ts(s.base + chrono::Duration::minutes(15));
    let rows = run(&db, &f, &[("from", &from), ("to", &to)]).await;
    assert_eq!(rows.len(), 15, "one row per minute, empty ones included");
    for (minute, row) in rows.iter().enumerate() {
        let expected = match minute {
            1..=10 => ["1", "0", "0", "1", "0.02"],
            12 => ["0", "1", "1", "2", "0.03"],
            _ => ["0", "0", "0", "0", "0.00"],
        };
        let got =
            ["completed", "failed", "cancelled", "finished", "jobs_per_s"].map(|c| col(row, c));
        assert_eq!(got, expected, "minute {minute}");
    }

    // retries_rescues.sql
    let f = check("retries_rescues.sql");
    let rows = run(&db, &f, &[]).await;
    let by_job: HashMap<&str, &Row> = rows.iter().map(|r| (col(r, "job_id"), r)).collect();
    assert_eq!(by_job.len(), 3);
    let a2 = by_job[s.job("A2").as_str()];
    assert_eq!(
        [col(a2, "state_now"), col(a2, "retries"), col(a2, "rescues")],
        ["completed", "1", "0"]
    );
    let c1 = by_job[s.job("C1").as_str()];
    assert_eq!(
        [col(c1, "state_now"), col(c1, "retries"), col(c1, "rescues")],
        ["failed", "1", "1"]
    );
    assert_eq!(
        col(c1, "events"),
        format!(
            "retried attempt 1 (worker {WORKER}): timeout after 30s\n\
             rescued attempt 2 (worker {WORKER}): lease expired"
        )
    );
    let g1 = by_job[s.job("G1").as_str()];
    assert_eq!(col(g1, "state_now"), "queued");
    let rows = run(&db, &f, &[("event", "rescued")]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(col(&rows[0], "job_id"), s.job("C1"));
    let rows = run(&db, &f, &[("tenant", "acme")]).await;
    assert_eq!(rows.len(), 2);

    // token_cost.sql at the default and at given prices.
    let f = check("token_cost.sql");
    let rows = run(&db, &f, &[]).await;
    let days: (String, String) = sqlx::query_as(
        "SELECT ($1::timestamptz AT TIME ZONE 'UTC')::date::text, \
                (now() AT TIME ZONE 'UTC')::date::text",
    )
    .bind(s.base)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let got: BTreeSet<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                "day_utc",
                "tenant",
                "jobs",
                "input_tokens",
                "output_tokens",
                "est_cost_usd",
            ]
            .map(|c| col(r, c))
        })
        .collect();
    let expected = BTreeSet::from([
        // 1,000 in at $3/M + 500 out at $15/M.
        [days.0.as_str(), "(none)", "10", "1000", "500", "0.010500"],
        // 40 in, 60 out.
        [days.1.as_str(), "acme", "2", "40", "60", "0.001020"],
    ]);
    assert_eq!(got, expected);
    let rows = run(
        &db,
        &f,
        &[
            ("tenant", "acme"),
            ("input_usd_per_mtok", "1"),
            ("output_usd_per_mtok", "2"),
        ],
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(col(&rows[0], "est_cost_usd"), "0.000160");

    // stuck_jobs.sql
    let f = check("stuck_jobs.sql");
    let rows = run(&db, &f, &[]).await;
    let got: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| ["job_id", "reason", "worker", "waiting_behind"].map(|c| col(r, c)))
        .collect();
    assert_eq!(
        got,
        [
            [
                s.job("E1").as_str(),
                "running longer than 10 minutes",
                WORKER,
                "0"
            ],
            [s.job("D1").as_str(), "lease expired", WORKER, "1"],
        ]
    );
    let running: f64 = col(&rows[0], "attempt_running_s").parse().unwrap();
    assert!((3590.0..3700.0).contains(&running), "{running}");
    let rows = run(&db, &f, &[("max_run", "2 hours")]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(col(&rows[0], "job_id"), s.job("D1"));

    // stuck_conversations.sql, then the runbook's repairs.
    let f = check("stuck_conversations.sql");
    let problems = |rows: Vec<Row>| -> BTreeMap<String, String> {
        rows.iter()
            .map(|r| {
                (
                    col(r, "conversation_id").to_owned(),
                    col(r, "problem").to_owned(),
                )
            })
            .collect()
    };
    let rows = run(&db, &f, &[]).await;
    assert_eq!(col(&rows[0], "conversation_id"), s.conversation("F"));
    assert_eq!(col(&rows[0], "user_id"), "erin");
    let expected: BTreeMap<String, String> = [
        ("D", "lease expired"),
        ("F", "waiting too long"),
        ("G", "head delayed"),
        ("H", "nothing runnable"),
        ("I", "count mismatch"),
    ]
    .iter()
    .map(|(c, p)| (s.conversation(c), p.to_string()))
    .collect();
    assert_eq!(problems(rows), expected);
    let rows = run(&db, &f, &[("max_wait", "1 hour")]).await;
    assert!(!problems(rows).contains_key(&s.conversation("F")));

    for (conversation, problem) in [
        ("G", "head delayed"),
        ("H", "nothing runnable"),
        ("I", "count mismatch"),
    ] {
        let script = runbook_fix(problem);
        let rows = psql_script(&db, &script, &s.conversation(conversation)).await;
        assert!(rows.is_ok(), "fix for {problem}: {rows:?}");
    }
    // D's lease: what a worker's rescuer does within seconds.
    queue::rescue(&db.pool, 100).await.unwrap();
    let rows = run(&db, &f, &[]).await;
    assert_eq!(
        problems(rows),
        BTreeMap::from([(s.conversation("F"), "waiting too long".to_owned())])
    );
    // The repaired conversations run again, in order.
    let g1 = s.jobs["G1"];
    let h1 = s.jobs["H1"];
    let claimed: BTreeSet<JobId> =
        queue::claim(&db.pool, WORKER, 100, LEASE, &[CHAT_KIND.to_owned()])
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
    assert!(
        claimed.contains(&g1) && claimed.contains(&h1),
        "{claimed:?}"
    );
    assert!(claimed.contains(&s.jobs["D1"]) && !claimed.contains(&s.jobs["D2"]));

    // Every file in sql/audit/ was run.
    let files: BTreeSet<String> = std::fs::read_dir(repo().join("sql/audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    assert_eq!(checked, files, "an audit file has no check here");
}

/// The runbook's repair statement for `problem`: the ```sql block that
/// starts with `-- fix: PROBLEM`.
fn runbook_fix(problem: &str) -> String {
    let text = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let marker = format!("-- fix: {problem}\n");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/runbook.md has no `{marker}` block"));
    let rest = &text[start..];
    rest[..rest.find("```").expect("closed code block")].to_owned()
}

async fn psql_script(
    db: &TestDb,
    script: &str,
    conversation: &str,
) -> Result<Vec<Row>, (i32, String)> {
    let dir = std::env::temp_dir().join(format!("skipjack-audit-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fix.sql");
    std::fs::write(&file, script).unwrap();
    let result = psql(
        db,
        file.to_str().unwrap(),
        &[("conversation", conversation)],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Every audit file starts with a header that says what it answers and
/// documents each psql variable it reads, and gives every optional one a
/// default, so `psql -f FILE` alone never fails on an unset variable.
#[test]
fn every_audit_file_documents_its_parameters() {
    let dir = repo().join("sql/audit");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        files += 1;
        assert!(
            text.starts_with(&format!("-- {name}: ")),
            "{name} must open with `-- {name}: what it answers`"
        );
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            header.contains("Parameters"),
            "{name}: no Parameters section"
        );
        assert!(header.contains("psql"), "{name}: no usage line");
        for var in psql_variables(&text) {
            assert!(
                header.contains(&format!("--   {var} ")),
                "{name}: variable {var} is not documented in the header"
            );
            assert!(
                text.contains(&format!("\\if :{{?{var}}}\n\\else\n\\set {var} ")),
                "{name}: variable {var} has no default"
            );
        }
    }
    assert!(files >= 8, "audit files missing");
}

/// The psql variables a script interpolates (`:'name'` or `:name`), apart
/// from the ones it sets itself with \gset.
fn psql_variables(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = body.as_bytes();
    let ident = |i: usize| -> String {
        body[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for i in 0..bytes.len() {
        if bytes[i] != b':' || (i > 0 && bytes[i - 1] == b':') {
            continue;
        }
        let name = match bytes.get(i + 1) {
            Some(b'\'') => ident(i + 2),
            Some(c) if c.is_ascii_alphabetic() => ident(i + 1),
            _ => continue,
        };
        if !name.is_empty() && !name.starts_with("audit_") {
            vars.insert(name);
        }
    }
    vars
}
