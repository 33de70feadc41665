//! The scratch database and the library functions the benchmarks stand
//! on: a fresh migrated database that is dropped afterwards, the queue's
//! "anything live" probe (all jobs, one tenant's), the vacuum, and the
//! plans of the console's list statements.

use skipjack::api::admin::query::{self, JobQuery};
use skipjack::queue::{self, JobState, NewJob};
use skipjack::tenants;
use skipjack_tools::Scratch;

fn server_url() -> String {
    std::env::var("SKIPJACK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn database_exists(name: &str) -> bool {
    let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
    let found: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    found
}

#[tokio::test]
async fn a_scratch_database_is_migrated_fresh_and_dropped() {
    let name = format!("skipjack_test_scratch_{}", uuid::Uuid::now_v7().simple());
    let scratch = Scratch::create(&server_url(), &name, 2).await.unwrap();
    let a = tenants::create_tenant(&scratch.pool, "a", None)
        .await
        .unwrap();
    let b = tenants::create_tenant(&scratch.pool, "b", None)
        .await
        .unwrap();
    assert!(!queue::read::has_live_jobs(&scratch.pool, None)
        .await
        .unwrap());
    let mut conn = scratch.pool.acquire().await.unwrap();
    queue::enqueue(
        &mut conn,
        &NewJob::new("x", serde_json::json!({})).with_tenant(a),
    )
    .await
    .unwrap();
    drop(conn);
    assert!(queue::read::has_live_jobs(&scratch.pool, None)
        .await
        .unwrap());
    assert!(queue::read::has_live_jobs(&scratch.pool, Some(a))
        .await
        .unwrap());
    assert!(!queue::read::has_live_jobs(&scratch.pool, Some(b))
        .await
        .unwrap());
    queue::maintenance::vacuum_jobs(&scratch.pool)
        .await
        .unwrap();

    // The plans of every combination of sources list_jobs reads.
    for (state, tables) in [
        (None, vec!["jobs", "job_history"]),
        (Some(JobState::Queued), vec!["jobs"]),
        (Some(JobState::Failed), vec!["job_history"]),
    ] {
        let q = JobQuery {
            state,
            tenant: Some(a),
            error: Some("time_out%".into()),
            since: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
            limit: 20,
            ..JobQuery::default()
        };
        let plans = query::explain_list_jobs(&scratch.pool, &q).await.unwrap();
        let read: Vec<&str> = plans.iter().map(|(table, _)| *table).collect();
        assert_eq!(read, tables);
        assert!(plans.iter().all(|(_, plan)| plan.contains("actual time")));
    }

    // Created again under the same name: empty, the old one dropped first.
    let again = Scratch::create(&server_url(), &name, 2).await.unwrap();
    assert!(!queue::read::has_live_jobs(&again.pool, None).await.unwrap());
    scratch.keep().await;
    again.drop().await.unwrap();
    assert!(!database_exists(&name).await);
}

#[tokio::test]
async fn a_name_that_would_need_quoting_is_refused() {
    for name in ["", "a-b", "x; DROP DATABASE postgres", "naïve"] {
        assert!(
            Scratch::create(&server_url(), name, 1).await.is_err(),
            "{name:?}"
        );
    }
}
