//! Test support: a fresh, migrated database per test.
//!
//! The migrations run once into a template database (named after a
//! fingerprint of the migrations compiled in, so a changed migration gets a
//! new template); each test then
//! gets `CREATE DATABASE … TEMPLATE …`, which takes tens of milliseconds, and
//! drops it when the `TestDb` goes out of scope (also when the test panics).
//! Postgres is the one `SKIPJACK_TEST_DATABASE_URL` names (default: the
//! local server, as `postgres`).

#![allow(dead_code)]

pub mod chat;
pub mod private_pg;

use skipjack::db;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub fn admin_url() -> String {
    std::env::var("SKIPJACK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of one's own, dropped on drop.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::with_pool_size(40).await
    }

    pub async fn with_pool_size(size: u32) -> TestDb {
        let admin = PgConnectOptions::from_str(&admin_url()).expect("valid admin URL");
        let mut conn = admin
            .connect()
            .await
            .expect("Postgres must be reachable (scripts/test.sh starts it)");
        let template = ensure_template(&mut conn).await;
        let name = format!("skipjack_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = db::with_database(&admin_url(), &name);
        let options = PgConnectOptions::from_str(&url)
            .expect("valid URL")
            .application_name("skipjack-test");
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("connect to test database");
        TestDb { pool, name, url }
    }

    /// A second pool on the same database (another "process").
    pub async fn new_pool(&self, size: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(size)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we could await in: use a
        // thread with a runtime of its own. FORCE closes our pools' sessions.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn ensure_template(conn: &mut PgConnection) -> String {
    // Named after the migrations compiled into this test binary (not the
    // files on disk, which may be newer than the binary).
    let template = format!("skipjack_tpl_{:016x}", db::migrations_fingerprint());

    // One test process migrates the template; the others wait for it.
    sqlx::query("SELECT pg_advisory_lock(hashtext('skipjack-test-template'))")
        .execute(&mut *conn)
        .await
        .expect("advisory lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut *conn)
            .await
            .expect("look up template");
    if !exists {
        let building = format!("{template}_building");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(&mut *conn)
            .await
            .expect("drop stale template");
        sqlx::query(&format!("CREATE DATABASE {building}"))
            .execute(&mut *conn)
            .await
            .expect("create template");
        let url = db::with_database(&admin_url(), &building);
        db::migrate(&url).await.expect("migrate template");
        sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(&mut *conn)
            .await
            .expect("publish template");
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('skipjack-test-template'))")
        .execute(&mut *conn)
        .await
        .expect("advisory unlock");
    template
}

/// Waits until `check` holds, polling every 10 ms, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}
