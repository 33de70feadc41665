//! The console in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Logs in, finds a failed job by filter, opens
//! it, retries it and sees it complete (a worker runs in this process),
//! cancels a queued job, and checks that a tenant's key does not log in.
//! Screenshots of each page go to `<target>/console-screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's
//! `chromium` and `chromium-driver`; scripts/test.sh installs them): the
//! test fails, saying so, when they are missing.

mod common;

use common::TestDb;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use skipjack::api::{Api, ApiConfig};
use skipjack::ids::TenantId;
use skipjack::queue::{self, Backoff, NewJob};
use skipjack::tenants;
use skipjack::worker::{NoopHandler, Worker, WorkerConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ADMIN_KEY: &str = "browser-admin-key-for-tests-0123456789abcdef";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `css`'s text contains `text`, or panics after a minute.
async fn wait_text(client: &Client, css: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            if el.text().await.unwrap_or_default().contains(text) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never showed {text:?}: {}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(client: &Client, css: &str, text: &str) {
    let el = client.find(Locator::Css(css)).await.expect(css);
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// A failed `noop` job in the history, as the worker would leave it.
async fn failed_job(pool: &sqlx::PgPool, tenant: TenantId, error: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO job_history (id, tenant_id, kind, priority, state, payload, attempts, max_attempts,
                                  error, worker, created_at, started_at, finished_at)
         VALUES ($1, $2, 'noop', 3, 'failed', '{}', 5, 5, $3, 'w-old',
                 now() - interval '40 s', now() - interval '39 s', now() - interval '30 s')",
    )
    .bind(id)
    .bind(tenant)
    .bind(error)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_retries_and_cancels_jobs_in_a_browser() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: this test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; scripts/test.sh installs them)"
        );
    }
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let tenant_key = tenants::create_tenant_with_key(&pool, "acme", None)
        .await
        .unwrap()
        .secret()
        .to_owned();
    let tenant = tenants::find_tenant(&pool, "acme").await.unwrap().id;
    let other = failed_job(&pool, tenant, "provider said: bad request").await;
    let failed = failed_job(&pool, tenant, "provider said: overloaded (529)").await;
    let mut conn = pool.acquire().await.unwrap();
    // Queued for an hour from now: the worker leaves it alone.
    let queued = queue::enqueue(
        &mut conn,
        &NewJob::new(NoopHandler::KIND, json!({}))
            .with_tenant(tenant)
            .with_delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap()
    .id;
    drop(conn);

    // The API with an admin key, on a real port, and a worker.
    let shutdown = CancellationToken::new();
    let api = Api::start(
        pool.clone(),
        ApiConfig {
            admin_key_hash: Some(skipjack::api::queue_status::admin_key_hash(ADMIN_KEY)),
            queue_refresh: Duration::from_millis(200),
            ..ApiConfig::default()
        },
        shutdown.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(api.serve(listener));
    let worker = Arc::new(
        Worker::builder(pool.clone())
            .register(NoopHandler)
            .config(WorkerConfig {
                id: "browser-w1".into(),
                concurrency: 4,
                poll_interval: Duration::from_millis(100),
                backoff: Backoff {
                    base: Duration::from_millis(20),
                    max: Duration::from_millis(100),
                },
                ..WorkerConfig::default()
            })
            .build()
            .unwrap(),
    );
    let worker_stop = CancellationToken::new();
    let worker_task = {
        let stop = worker_stop.clone();
        tokio::spawn(async move { worker.run(stop).await.expect("worker") })
    };

    // chromedriver on a free port, and a headless Chromium through it.
    let port = free_port();
    let mut driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    let mut client = None;
    for _ in 0..100 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("a WebDriver session from chromedriver");

    // A tenant's key does not log in.
    c.goto(&format!("{base}/console")).await.unwrap();
    wait_text(&c, "h1", "Log in").await;
    fill(&c, "#key", &tenant_key).await;
    click(&c, "#login").await;
    wait_text(&c, "#login-error", "not the admin key").await;
    shoot(&c, "login-refused").await;

    // The admin key does.
    fill(&c, "#key", ADMIN_KEY).await;
    click(&c, "#login").await;
    wait_text(&c, "h1", "Overview").await;
    wait_text(&c, "#queued", "1").await;
    shoot(&c, "overview").await;

    // Find the failed job by filter.
    click(&c, "nav a[href='/console/jobs']").await;
    wait_text(&c, "h1", "Jobs").await;
    c.find(Locator::Css("#f-state"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    fill(&c, "#f-error", "overloaded").await;
    click(&c, "#filter").await;
    wait_text(&c, "table.jobs caption", "1 jobs").await;
    let page = c.source().await.unwrap();
    assert!(page.contains(&failed.to_string()) && !page.contains(&other.to_string()));
    shoot(&c, "jobs-filtered").await;

    // Open it and retry it; it completes on the worker, and the page shows
    // it without a reload.
    click(&c, "a.job-link").await;
    wait_text(&c, "#job-state", "failed").await;
    wait_text(&c, "#job-error", "overloaded").await;
    shoot(&c, "job-failed").await;
    click(&c, "#retry").await;
    wait_text(&c, "h1", "Retry job").await;
    click(&c, "#confirm").await;
    wait_text(&c, ".notice", "queued again").await;
    wait_text(&c, "#job-state", "completed").await;
    shoot(&c, "job-completed").await;

    // Cancel the queued job.
    c.goto(&format!("{base}/console/jobs?state=queued"))
        .await
        .unwrap();
    wait_text(&c, "table.jobs", &queued.to_string()).await;
    click(&c, "a.job-link").await;
    wait_text(&c, "#job-state", "queued").await;
    click(&c, "#cancel").await;
    wait_text(&c, "h1", "Cancel job").await;
    shoot(&c, "cancel-confirm").await;
    click(&c, "#confirm").await;
    wait_text(&c, "#job-state", "cancelled").await;
    shoot(&c, "job-cancelled").await;

    // The conversation page needs a conversation: none here; the overview
    // after all this.
    c.goto(&format!("{base}/console")).await.unwrap();
    wait_text(&c, "#queued", "0").await;
    shoot(&c, "overview-after").await;

    c.close().await.unwrap();
    driver.kill().await.ok();
    worker_stop.cancel();
    worker_task.await.unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
    let state: String = sqlx::query_scalar("SELECT state::text FROM job_history WHERE id = $1")
        .bind(failed)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "completed");
}
