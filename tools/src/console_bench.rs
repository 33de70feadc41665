//! `skipjack-bench console`: how fast the console's jobs list and job page
//! answer over a large history.
//!
//! Fills a [`Scratch`] database with `--finished` jobs in `job_history` over the last `--days` days and
//! `--queued` jobs in `jobs`, analyses it, then sends requests through the
//! API's router in this process (the whole handler, without the network):
//! `GET /v1/admin/jobs` with several filter sets (and the second page of
//! each), and the HTML job page `GET /console/jobs/{id}` of random live and
//! finished jobs. Prints latency percentiles per request, and with
//! `--explain` the plans (EXPLAIN ANALYZE) of the list statements.

use crate::{percentile, sql, Scratch};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde::Serialize;
use skipjack::api::admin::query;
use skipjack::api::{Api, ApiConfig};
use skipjack::tenants;
use sqlx::PgPool;
use std::fmt::Write as _;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

/// The admin key of the scratch API (never used elsewhere).
const KEY: &str = "bench-console-admin-key-0123456789abcdef";

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsoleBenchArgs {
    /// Finished jobs in job_history.
    #[arg(long, default_value_t = 1_000_000)]
    pub finished: i64,
    /// Queued jobs in jobs.
    #[arg(long, default_value_t = 100_000)]
    pub queued: i64,
    /// Days the finished jobs are spread over (one partition a day).
    #[arg(long, default_value_t = 7)]
    pub days: i64,
    /// Tenants the jobs are spread over.
    #[arg(long, default_value_t = 10)]
    pub tenants: i64,
    /// Requests per measured route.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Also print EXPLAIN (ANALYZE, BUFFERS) of the list statements.
    #[arg(long)]
    pub explain: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "skipjack_bench_console")]
    pub bench_database: String,
}

/// Latencies of one request kind, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub request: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What `skipjack-bench console` prints.
#[derive(Clone, Debug, Serialize)]
pub struct ConsoleBenchReport {
    pub finished: i64,
    pub queued: i64,
    pub samples: usize,
    pub fill_seconds: f64,
    pub results: Vec<Measured>,
    /// EXPLAIN ANALYZE output per filter set, with `--explain`.
    pub plans: Vec<(String, String)>,
}

impl ConsoleBenchReport {
    /// The human table (and the plans).
    pub fn table(&self) -> String {
        let mut out = format!(
            "skipjack-bench console ({} finished, {} queued jobs; {} requests each; filled in {:.0} s)\n{:<64}{:>10}{:>10}{:>10}\n",
            self.finished, self.queued, self.samples, self.fill_seconds, "request", "p50 ms", "p99 ms", "max ms"
        );
        for r in &self.results {
            let _ = writeln!(
                out,
                "{:<64}{:>10.2}{:>10.2}{:>10.2}",
                r.request, r.p50_ms, r.p99_ms, r.max_ms
            );
        }
        for (name, plan) in &self.plans {
            let _ = writeln!(out, "\n-- {name}\n{plan}");
        }
        out
    }
}

/// Filter sets of the jobs list. The last three match nothing in the
/// bench's data: each page costs the whole scan budget.
const FILTERS: &[&str] = &[
    "",
    "state=failed",
    "state=queued",
    "tenant=bench-3",
    "state=failed&error=rate%20limited",
    "kind=webhook&priority=1",
    "state=completed&since=6h",
    "tenant=bench-7&state=cancelled&since=3d",
    "kind=webhook&priority=9",
    "tenant=bench-7&kind=webhook&priority=3",
    "state=cancelled&error=timeout",
];

/// Creates the scratch database, fills it, measures, drops it.
pub async fn run(
    database_url: &str,
    args: &ConsoleBenchArgs,
) -> anyhow::Result<ConsoleBenchReport> {
    anyhow::ensure!(
        args.finished >= 10 && args.tenants >= 1 && args.days >= 1,
        "too small a bench"
    );
    let scratch = Scratch::create(database_url, &args.bench_database, 8).await?;
    let result = measure(&scratch, args).await;
    scratch.drop().await?;
    result
}

/// Tenants `bench-0` .. `bench-{tenants - 1}`, the history's partitions,
/// the finished and the queued jobs, then fresh statistics.
async fn fill(scratch: &Scratch, args: &ConsoleBenchArgs) -> anyhow::Result<()> {
    let pool = &scratch.pool;
    for i in 0..args.tenants {
        tenants::create_tenant(pool, &format!("bench-{i}"), None).await?;
    }
    sqlx::query(sql::CONSOLE_PARTITIONS)
        .bind(args.days as i32)
        .execute(pool)
        .await?;
    sqlx::query(sql::CONSOLE_FILL_HISTORY)
        .bind(args.finished)
        .bind(args.days as f64)
        .execute(pool)
        .await?;
    sqlx::query(sql::CONSOLE_FILL_QUEUED)
        .bind(args.queued)
        .execute(pool)
        .await?;
    scratch.vacuum_analyze().await
}

async fn get(
    router: &axum::Router,
    uri: &str,
    cookie: Option<&str>,
) -> anyhow::Result<(f64, Vec<u8>)> {
    let mut request = Request::builder().uri(uri);
    request = match cookie {
        Some(c) => request.header(header::COOKIE, c),
        None => request.header(header::AUTHORIZATION, format!("Bearer {KEY}")),
    };
    let started = Instant::now();
    let response = router.clone().oneshot(request.body(Body::empty())?).await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await?
        .to_vec();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        status == StatusCode::OK,
        "{uri}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((ms, body))
}

fn summarise(request: String, mut ms: Vec<f64>) -> Measured {
    ms.sort_by(f64::total_cmp);
    Measured {
        request,
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

async fn measure(scratch: &Scratch, args: &ConsoleBenchArgs) -> anyhow::Result<ConsoleBenchReport> {
    let pool = &scratch.pool;
    let started = Instant::now();
    fill(scratch, args).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let shutdown = CancellationToken::new();
    let hash = skipjack::api::queue_status::admin_key_hash(KEY);
    let api = Api::start(
        pool.clone(),
        ApiConfig {
            admin_key_hash: Some(hash),
            queue_gauges: None,
            ..ApiConfig::default()
        },
        shutdown.clone(),
    );
    let router = api.router();
    let cookie = format!(
        "{}={}",
        skipjack::api::admin::auth::COOKIE_NAME,
        skipjack::api::admin::auth::new_session(&hash, chrono::Utc::now().timestamp())
    );
    let mut results = Vec::new();
    for filter in FILTERS {
        let first = format!("/v1/admin/jobs?{filter}");
        let (_, body) = get(&router, &first, None).await?;
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        let mut uris = vec![(format!("jobs ?{filter}"), first.clone())];
        if let Some(cursor) = page["next_cursor"].as_str() {
            uris.push((
                format!("jobs ?{filter} (page 2)"),
                format!("{first}&cursor={cursor}"),
            ));
        }
        for (label, uri) in uris {
            let mut ms = Vec::with_capacity(args.samples);
            for _ in 0..args.samples {
                ms.push(get(&router, &uri, None).await?.0);
            }
            results.push(summarise(label, ms));
        }
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(sql::CONSOLE_SAMPLE_IDS)
        .bind(args.samples.max(2) as i64)
        .fetch_all(pool)
        .await?;
    anyhow::ensure!(!ids.is_empty(), "no jobs to open");
    let mut ms = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let id = ids[i % ids.len()];
        ms.push(
            get(&router, &format!("/console/jobs/{id}"), Some(&cookie))
                .await?
                .0,
        );
    }
    results.push(summarise("job page /console/jobs/{id} (HTML)".into(), ms));
    let mut ms = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let id = ids[i % ids.len()];
        ms.push(get(&router, &format!("/v1/admin/jobs/{id}"), None).await?.0);
    }
    results.push(summarise("job /v1/admin/jobs/{id} (JSON)".into(), ms));
    let plans = if args.explain {
        explain(pool).await?
    } else {
        Vec::new()
    };
    shutdown.cancel();
    api.stop().await;
    Ok(ConsoleBenchReport {
        finished: args.finished,
        queued: args.queued,
        samples: args.samples,
        fill_seconds,
        results,
        plans,
    })
}

/// EXPLAIN ANALYZE of the list statements for each filter set, as
/// `list_jobs` runs them.
async fn explain(pool: &PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let mut plans = Vec::new();
    for filter in FILTERS {
        let params: skipjack::api::admin::JobsQuery =
            serde_json::from_value(serde_json::Value::Object(
                filter
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| {
                        (
                            k.to_owned(),
                            serde_json::Value::String(v.replace("%20", " ")),
                        )
                    })
                    .collect(),
            ))?;
        let q = params
            .resolve(pool)
            .await
            .map_err(|e| anyhow::anyhow!("{filter}: {e}"))?;
        for (table, plan) in query::explain_list_jobs(pool, &q).await? {
            plans.push((format!("{table}: ?{filter}"), plan));
        }
    }
    Ok(plans)
}
