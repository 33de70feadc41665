//! Wake-ups that survive the loss of the LISTEN connection, against real
//! Postgres servers: a terminated listener backend, a crashed and restarted
//! server (a private cluster of the test's own, never the shared one), a
//! silently dead connection (a TCP proxy that stops forwarding), a lost
//! NOTIFY caught by the long-polls' re-check, the long-poll caps, and a
//! COMMIT whose answer is lost after the server committed.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::private_pg::PrivatePg;
use common::{count, eventually, TestDb};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skipjack::api::long_poll::LongPollConfig;
use skipjack::api::{Api, ApiConfig};
use skipjack::queue::notify::ListenerConfig;
use skipjack::queue::{self, Backoff, FinishItem, NewJob, Outcome};
use skipjack::tenants;
use skipjack::worker::{NoopHandler, Worker, WorkerConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Generous bound for waits that must not hang; never a timing assertion.
const NO_HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A TCP proxy that can go silent on chosen connections.

/// Forwards connections to Postgres. `freeze` stops forwarding on the
/// connections whose startup message names an application containing the
/// given text, without closing them: to their client the server is still
/// there, it just never answers (a dead network path).
struct Proxy {
    port: u16,
    /// The application name to silence, and the connections (by accept
    /// number) it applies to: those accepted before the freeze.
    frozen: Arc<Mutex<Option<(String, usize)>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen: Arc<Mutex<Option<(String, usize)>>> = Arc::new(Mutex::new(None));
        let freeze = frozen.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                let freeze = freeze.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, cw) = client.into_split();
                    let (sr, mut sw) = server.into_split();
                    // The first client bytes hold the startup message.
                    let mut first = vec![0u8; 8192];
                    let Ok(n) = cr.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    let startup = String::from_utf8_lossy(&first).into_owned();
                    if sw.write_all(&first).await.is_err() {
                        return;
                    }
                    let silent = Arc::new(AtomicBool::new(false));
                    let watch = {
                        let silent = silent.clone();
                        let freeze = freeze.clone();
                        tokio::spawn(async move {
                            loop {
                                let hit = freeze.lock().unwrap().as_ref().is_some_and(
                                    |(needle, before)| {
                                        number < *before && startup.contains(needle.as_str())
                                    },
                                );
                                if hit {
                                    silent.store(true, Ordering::SeqCst);
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        })
                    };
                    let up = pump(cr, sw, silent.clone());
                    let down = pump(sr, cw, silent);
                    tokio::join!(up, down);
                    watch.abort();
                });
            }
        });
        Proxy {
            port,
            frozen,
            accepted,
        }
    }

    /// Silences the open connections of `application`; later ones work.
    fn freeze(&self, application: &str) {
        let before = self.accepted.load(Ordering::SeqCst);
        *self.frozen.lock().unwrap() = Some((application.to_owned(), before));
    }
}

/// Copies `from` to `to` until either closes; once `silent`, reads are
/// swallowed and nothing is written (the sockets stay open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            // Keep the socket open, forward nothing, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The API, driven through its router.

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(router: &Router, method: &str, uri: &str, key: &str, body: Option<&Value>) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// A running API and its tasks; stopped on drop.
struct TestApi {
    api: Option<Api>,
    router: Router,
    shutdown: CancellationToken,
}

impl TestApi {
    fn start(pool: PgPool, config: ApiConfig) -> TestApi {
        let shutdown = CancellationToken::new();
        let api = Api::start(pool, config, shutdown.clone());
        let router = api.router();
        TestApi {
            api: Some(api),
            router,
            shutdown,
        }
    }

    fn long_poll(&self) -> &skipjack::api::long_poll::LongPoll {
        &self.api.as_ref().unwrap().state().long_poll
    }

    async fn submit(&self, key: &str, body: Value) -> Answer {
        call(&self.router, "POST", "/v1/chat", key, Some(&body)).await
    }

    /// Starts a long-poll of `wait` seconds; yields its answer.
    fn spawn_poll(&self, key: &str, id: &str, wait: u64) -> tokio::task::JoinHandle<Answer> {
        let router = self.router.clone();
        let key = key.to_owned();
        let uri = format!("/v1/chat/{id}?wait={wait}");
        tokio::spawn(async move { call(&router, "GET", &uri, &key, None).await })
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(api) = self.api.take() {
            tokio::spawn(api.stop());
        }
    }
}

/// An API config whose safety nets are far away: only the mechanism under
/// test can answer a long-poll early.
fn config(recheck: Duration, listener: ListenerConfig) -> ApiConfig {
    ApiConfig {
        long_poll: LongPollConfig {
            recheck,
            listener,
            ..LongPollConfig::default()
        },
        queue_gauges: None,
        ..ApiConfig::default()
    }
}

async fn new_tenant(pool: &PgPool, name: &str) -> String {
    tenants::create_tenant_with_key(pool, name, None)
        .await
        .unwrap()
        .secret()
        .to_owned()
}

fn job_id(answer: &Answer) -> String {
    answer.body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {} ({})", answer.body, answer.status))
        .to_owned()
}

/// Claims every ready chat job and completes it.
async fn complete_all(pool: &PgPool) -> usize {
    let claimed = queue::claim(
        pool,
        "test-worker",
        100,
        Duration::from_secs(30),
        &["chat".into()],
    )
    .await
    .unwrap();
    let outcome = Outcome::Completed {
        result: json!({"response": "done", "model": "test"}),
        usage: None,
    };
    let items: Vec<FinishItem> = claimed
        .iter()
        .map(|job| FinishItem {
            job: job.id,
            attempt: job.attempt,
            outcome: &outcome,
        })
        .collect();
    queue::finish(pool, "test-worker", &items, &Backoff::default())
        .await
        .unwrap();
    claimed.len()
}

/// The LISTEN session of the API (or worker) on the current database.
async fn listener_pid(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'skipjack-test-listener'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

/// Submits `n` jobs and starts a long-poll of `wait` seconds on each; waits
/// until all are in flight.
async fn polls_in_flight(
    t: &TestApi,
    key: &str,
    n: usize,
    wait: u64,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    let mut polls = Vec::new();
    for i in 0..n {
        let submitted = t
            .submit(key, json!({"user_id": format!("u{i}"), "message": "hi"}))
            .await;
        assert_eq!(submitted.status, StatusCode::ACCEPTED, "{}", submitted.body);
        polls.push(t.spawn_poll(key, &job_id(&submitted), wait));
    }
    eventually(NO_HANG, "long-polls in flight", || async {
        t.long_poll().in_flight() == n && t.long_poll().is_listening()
    })
    .await;
    polls
}

/// The longest long-poll wait the API grants, in seconds: the tests' polls
/// wait that long.
const LONGEST_WAIT_S: u64 = 60;

/// Every poll answers `completed` before its own deadline could have ended
/// it: within half its wait (a hang guard, not a measurement).
async fn all_completed_before_their_deadline(polls: Vec<tokio::task::JoinHandle<Answer>>) {
    let guard = Duration::from_secs(LONGEST_WAIT_S / 2);
    tokio::time::timeout(guard, async {
        for poll in polls {
            let answer = poll.await.unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.body["status"], "completed", "{}", answer.body);
        }
    })
    .await
    .expect("a long-poll was not woken by its job's completion");
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_get_their_completion_after_the_listener_backend_is_killed() {
    let db = TestDb::new().await;
    let key = new_tenant(&db.pool, "acme").await;
    // The re-check is out of reach: only the reconnect can answer early.
    let t = TestApi::start(
        db.pool.clone(),
        config(Duration::from_secs(600), ListenerConfig::default()),
    );
    let polls = polls_in_flight(&t, &key, 3, LONGEST_WAIT_S).await;

    let pid = listener_pid(&db.pool)
        .await
        .expect("the API's LISTEN session");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);
    eventually(NO_HANG, "the listener reconnected", || async {
        t.long_poll().reconnects() >= 1
            && matches!(listener_pid(&db.pool).await, Some(new) if new != pid)
    })
    .await;
    assert_eq!(complete_all(&db.pool).await, 3);
    all_completed_before_their_deadline(polls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_get_their_completion_across_a_postgres_crash() {
    let pg = PrivatePg::start_new(&[]);
    skipjack::db::migrate(&pg.url()).await.unwrap();
    let setup = pg.pool(4).await;
    let key = new_tenant(&setup, "acme").await;
    let api_pool = pg.pool(8).await;
    let t = TestApi::start(
        api_pool,
        config(Duration::from_secs(600), ListenerConfig::default()),
    );
    let polls = polls_in_flight(&t, &key, 3, LONGEST_WAIT_S).await;
    assert_eq!(
        count(
            &setup,
            "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_done'"
        )
        .await,
        1
    );
    drop(setup);

    // A crash: the unlogged waiter table comes back empty.
    pg.crash();
    pg.start();
    let after = pg.pool(4).await;
    eventually(NO_HANG, "the listener reconnected", || async {
        t.long_poll().reconnects() >= 1
    })
    .await;
    // The API registered again by itself, so the finish below notifies.
    eventually(NO_HANG, "the API registered again", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_done'",
        )
        .fetch_one(&after)
        .await
        .is_ok_and(|n| n == 1)
    })
    .await;
    assert_eq!(complete_all(&after).await, 3);
    all_completed_before_their_deadline(polls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_claims_promptly_after_a_postgres_crash() {
    let pg = PrivatePg::start_new(&[]);
    skipjack::db::migrate(&pg.url()).await.unwrap();
    let pool = pg.pool(8).await;
    let worker = Arc::new(
        Worker::builder(pool.clone())
            .register(NoopHandler)
            .config(WorkerConfig {
                // Far longer than the test: only a NOTIFY wakes the worker.
                poll_interval: Duration::from_secs(3600),
                maintenance: None,
                queue_gauges: None,
                ..WorkerConfig::default()
            })
            .build()
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let run = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let registered = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM queue_waiters WHERE channel = 'skipjack_jobs'",
        )
        .fetch_one(&pool)
        .await
        .is_ok_and(|n| n == 1)
    };
    eventually(NO_HANG, "the worker waits", || registered(pool.clone())).await;
    drop(pool);

    pg.crash();
    pg.start();
    let after = pg.pool(4).await;
    // The worker listens again and registers again (the crash emptied the
    // unlogged waiter table), without waiting for its hour-long poll.
    eventually(NO_HANG, "the worker registered again", || {
        registered(after.clone())
    })
    .await;
    eventually(NO_HANG, "the worker listens again", || async {
        listener_pid(&after).await.is_some()
    })
    .await;
    let mut conn = after.acquire().await.unwrap();
    let id = queue::enqueue(&mut conn, &NewJob::new(NoopHandler::KIND, json!({})))
        .await
        .unwrap()
        .id;
    drop(conn);
    eventually(NO_HANG, "the job was run", || async {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM job_history WHERE id = $1)")
            .bind(id)
            .fetch_one(&after)
            .await
            .unwrap_or(false)
    })
    .await;
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_listener_is_found_by_its_probe() {
    let db = TestDb::new().await;
    let key = new_tenant(&db.pool, "acme").await;
    // The API reaches Postgres through a proxy that can go silent.
    let proxy = Proxy::start("127.0.0.1:5432".to_owned()).await;
    let options = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .port(proxy.port)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        .application_name("skipjack-test");
    let api_pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    let t = TestApi::start(
        api_pool,
        config(
            Duration::from_secs(600),
            ListenerConfig {
                probe_interval: Duration::from_millis(300),
                probe_timeout: Duration::from_millis(1000),
                ..ListenerConfig::default()
            },
        ),
    );
    let polls = polls_in_flight(&t, &key, 2, LONGEST_WAIT_S).await;

    // The listener's connection stays open but nothing crosses it any more:
    // no end of stream ever comes, only the probe can tell.
    proxy.freeze("skipjack-test-listener");
    eventually(NO_HANG, "the listener replaced its connection", || async {
        t.long_poll().reconnects() >= 1
    })
    .await;
    assert_eq!(complete_all(&db.pool).await, 2);
    all_completed_before_their_deadline(polls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notify_is_caught_by_the_recheck() {
    let db = TestDb::new().await;
    let key = new_tenant(&db.pool, "acme").await;
    let t = TestApi::start(
        db.pool.clone(),
        config(Duration::from_millis(500), ListenerConfig::default()),
    );
    let polls = polls_in_flight(&t, &key, 2, LONGEST_WAIT_S).await;
    // The registration vanishes behind the API's back (as a prune of a
    // stale row would do): the finish sends no NOTIFY at all.
    sqlx::query("DELETE FROM queue_waiters")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(complete_all(&db.pool).await, 2);
    all_completed_before_their_deadline(polls).await;
}

/// The long-polls a completion wakes are answered by one read of all their
/// jobs, not one read each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_woken_together_are_answered_by_one_read() {
    let db = TestDb::new().await;
    let key = new_tenant(&db.pool, "acme").await;
    // The re-check is out of reach: only the wake-up can answer early.
    let t = TestApi::start(
        db.pool.clone(),
        config(Duration::from_secs(600), ListenerConfig::default()),
    );
    let polls = polls_in_flight(&t, &key, 20, LONGEST_WAIT_S).await;
    eventually(NO_HANG, "every long-poll read its job once", || async {
        t.long_poll().own_reads() == 20
    })
    .await;
    assert_eq!(t.long_poll().wake_reads(), 0);

    // One finish statement: one NOTIFY naming all twenty.
    assert_eq!(complete_all(&db.pool).await, 20);
    all_completed_before_their_deadline(polls).await;
    assert_eq!(t.long_poll().wake_reads(), 1);
    assert_eq!(
        t.long_poll().own_reads(),
        20,
        "no long-poll read its job again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_over_the_caps_get_429_with_retry_after() {
    let db = TestDb::new().await;
    let acme = new_tenant(&db.pool, "acme").await;
    let globex = new_tenant(&db.pool, "globex").await;
    let mut cfg = config(Duration::from_secs(5), ListenerConfig::default());
    cfg.long_poll.max_waits = 3;
    cfg.long_poll.max_tenant_waits = 2;
    cfg.long_poll.retry_after_secs = 2;
    let t = TestApi::start(db.pool.clone(), cfg);
    let mut polls = polls_in_flight(&t, &acme, 2, LONGEST_WAIT_S).await;

    // acme has its two: a third is refused at once.
    let third = job_id(
        &t.submit(&acme, json!({"user_id": "x", "message": "hi"}))
            .await,
    );
    let refused = call(
        &t.router,
        "GET",
        &format!("/v1/chat/{third}?wait=30"),
        &acme,
        None,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], "too_many_long_polls");
    assert_eq!(refused.headers[header::RETRY_AFTER], "2");
    // Without `wait` it still answers.
    let plain = call(&t.router, "GET", &format!("/v1/chat/{third}"), &acme, None).await;
    assert_eq!(plain.status, StatusCode::OK);
    // A finished job is answered even with `wait`: only a wait is refused.
    let cancelled = call(
        &t.router,
        "DELETE",
        &format!("/v1/chat/{third}"),
        &acme,
        None,
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let finished = call(
        &t.router,
        "GET",
        &format!("/v1/chat/{third}?wait=30"),
        &acme,
        None,
    )
    .await;
    assert_eq!(finished.status, StatusCode::OK, "{}", finished.body);
    assert_eq!(finished.body["status"], "cancelled");

    // globex may still wait: the process has room for one more.
    let theirs = job_id(
        &t.submit(&globex, json!({"user_id": "y", "message": "hi"}))
            .await,
    );
    polls.push(t.spawn_poll(&globex, &theirs, LONGEST_WAIT_S));
    eventually(NO_HANG, "three long-polls in flight", || async {
        t.long_poll().in_flight() == 3
    })
    .await;
    // Now the process is full, for every tenant.
    let fourth = job_id(
        &t.submit(&globex, json!({"user_id": "z", "message": "hi"}))
            .await,
    );
    let refused = call(
        &t.router,
        "GET",
        &format!("/v1/chat/{fourth}?wait=30"),
        &globex,
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["error"]["code"], "too_many_long_polls");

    // The admitted ones are answered as usual, and their places free up.
    assert!(complete_all(&db.pool).await >= 3);
    all_completed_before_their_deadline(polls).await;
    eventually(NO_HANG, "no long-poll in flight", || async {
        t.long_poll().in_flight() == 0
    })
    .await;
    let again = call(
        &t.router,
        "GET",
        &format!("/v1/chat/{fourth}?wait=1"),
        &globex,
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_answered_from_the_database() {
    // Every commit of a default session waits for a synchronous standby
    // that never comes: the COMMIT is durable locally, and the answer is
    // lost when the waiting backend is terminated (as in a failover).
    let pg = PrivatePg::start_new(&[]);
    skipjack::db::migrate(&pg.url()).await.unwrap();
    let setup = pg.pool(4).await;
    let key = new_tenant(&setup, "acme").await;
    let standby = |names: &'static str| {
        let setup = setup.clone();
        async move {
            sqlx::query(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
            ))
            .execute(&setup)
            .await
            .unwrap();
            sqlx::query("SELECT pg_reload_conf()")
                .execute(&setup)
                .await
                .unwrap();
        }
    };
    // The conversation exists already, so the submission writes nothing but
    // its job.
    let conversation: uuid::Uuid = {
        let mut conn = setup.acquire().await.unwrap();
        let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO conversations (id, tenant_id, user_id) VALUES ($1, $2, 'u')")
            .bind(id)
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .unwrap();
        id
    };
    let api_pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg.url())
        .await
        .unwrap();
    let t = TestApi::start(
        api_pool,
        config(Duration::from_secs(5), ListenerConfig::default()),
    );
    standby("ghost").await;

    let body = json!({
        "user_id": "u", "message": "hello", "conversation_id": conversation,
        "idempotency_key": "lost-answer-1",
    });
    let submit = {
        let router = t.router.clone();
        let key = key.clone();
        let body = body.clone();
        tokio::spawn(async move { call(&router, "POST", "/v1/chat", &key, Some(&body)).await })
    };
    // The group commit's COMMIT waits for the standby...
    let waiting = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' LIMIT 1",
        )
        .fetch_optional(&setup)
        .await
        .unwrap()
    };
    eventually(NO_HANG, "a COMMIT waiting for the standby", || async {
        waiting().await.is_some()
    })
    .await;
    // ...and its backend is killed: committed, but the answer is lost.
    let pid = waiting().await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&setup)
        .await
        .unwrap();
    let answer = tokio::time::timeout(NO_HANG, submit)
        .await
        .expect("the submission answered")
        .unwrap();
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = job_id(&answer);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&setup)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the answered job is the stored one");
    assert_eq!(count(&setup, "SELECT count(*) FROM jobs").await, 1);

    // A client retrying with the key finds that job, and no other is made.
    standby("").await;
    let retry = {
        let router = t.router.clone();
        let key = key.clone();
        tokio::spawn(async move { call(&router, "POST", "/v1/chat", &key, Some(&body)).await })
    };
    let retry = tokio::time::timeout(NO_HANG, retry)
        .await
        .expect("the retry answered")
        .unwrap();
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert_eq!(job_id(&retry), id);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(count(&setup, "SELECT count(*) FROM jobs").await, 1);
}

/// A long-poll for a job that is already finished is answered at once,
/// even while no listener listens (a process starting, or reconnecting
/// after a database restart): only a wait needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_answered_while_no_listener_listens() {
    let db = TestDb::new().await;
    let tenant = tenants::create_tenant(&db.pool, "acme", None)
        .await
        .unwrap();
    let mut job = NewJob::new("chat", json!({}));
    job.tenant_id = Some(tenant);
    let mut conn = db.pool.acquire().await.unwrap();
    let id = queue::enqueue(&mut conn, &job).await.unwrap().id;
    drop(conn);
    assert_eq!(complete_all(&db.pool).await, 1);
    // Never spawned: its listener never listens.
    let long_poll =
        skipjack::api::long_poll::LongPoll::new(db.pool.clone(), LongPollConfig::default());
    assert!(!long_poll.is_listening());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let view = tokio::time::timeout(
        NO_HANG,
        long_poll.wait(id, tenant, deadline, &CancellationToken::new()),
    )
    .await
    .expect("answered without waiting for a listener")
    .unwrap()
    .expect("the job");
    assert_eq!(view.state, queue::JobState::Completed);
}
