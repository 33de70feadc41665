//! Connecting to Postgres, migrating it, and checking that it is migrated.
//!
//! Migrations are refinery's, embedded from `migrations/` at build time. They
//! run over refinery's `tokio-postgres` driver on one short-lived connection
//! (refinery has no sqlx driver; a second client for one command is simpler
//! and safer than re-implementing refinery's migration traits over sqlx).
//! Everything else talks to the database through sqlx.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Database errors that stop a process at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "the database is not migrated (schema version {}, this build needs {expected}): run `skipjack migrate`",
        applied.map_or("none".to_owned(), |v| v.to_string())
    )]
    NotMigrated { applied: Option<i32>, expected: i32 },
    #[error("the database schema (version {applied}) is newer than this build ({expected}): upgrade skipjack")]
    TooNew { applied: i32, expected: i32 },
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// A postgres:// URL. May hold a password: never log it.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long a query waits for a free connection before failing, so an
    /// overloaded or unreachable database yields errors, not hangs.
    pub acquire_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
}

/// Opens a connection pool. Fails fast when the database is unreachable.
pub async fn connect(config: &DbConfig) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?
        .application_name(&config.application_name);
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.acquire_timeout)
        // No ping before every checkout: it costs a round trip on every
        // query (a third of a claim's latency); a dead connection shows up
        // as an error of the query itself, and the pool replaces it.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// `url` with its database name replaced by `database` (query kept). For
/// tools that create scratch databases next to the one they were given.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The schema version this build expects: its newest migration.
pub fn expected_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

/// A fingerprint of the migrations compiled into this build (versions,
/// names and checksums): tools that keep migrated template databases name
/// them after it, so a template always matches the build that uses it.
pub fn migrations_fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for m in embedded::migrations::runner().get_migrations() {
        (m.version(), m.name(), m.checksum()).hash(&mut hasher);
    }
    hasher.finish()
}

/// Applies the pending migrations; returns the names of those applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| DbError::Migrate(format!("cannot connect: {e}")))?;
    let driver = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| DbError::Migrate(e.to_string()));
    drop(client);
    let _ = driver.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// Fails unless the database is migrated to exactly this build's version.
pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let expected = expected_version();
    let applied: Option<i32> = match sqlx::query_scalar::<_, Option<i32>>(
        "SELECT max(version) FROM refinery_schema_history",
    )
    .fetch_one(pool)
    .await
    {
        Ok(version) => version,
        // 42P01: undefined_table, the history table does not exist yet.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => None,
        Err(e) => return Err(DbError::Sqlx(e)),
    };
    match applied {
        Some(v) if v == expected => Ok(()),
        Some(v) if v > expected => Err(DbError::TooNew {
            applied: v,
            expected,
        }),
        applied => Err(DbError::NotMigrated { applied, expected }),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql://h:1/", "x"),
            "postgresql://h:1/x"
        );
    }
}
