//! Connecting to Postgres, migrating it, and checking that its schema is one
//! this build can run on.
//!
//! Migrations are refinery's, embedded from `migrations/` at build time. They
//! run over refinery's `tokio-postgres` driver on one short-lived connection
//! (refinery has no sqlx driver; a second client for one command is simpler
//! and safer than re-implementing refinery's migration traits over sqlx).
//! Everything else talks to the database through sqlx.
//!
//! Both honour the URL's `sslmode` / `sslrootcert` / `sslcert` / `sslkey`
//! with libpq's meaning ([`crate::tls`]), so a managed Postgres that
//! requires verified TLS is reached with the same URL by every process and
//! by `skipjack migrate`.
//!
//! Refinery runs every migration inside a transaction, where `CREATE INDEX
//! CONCURRENTLY` is refused. A migration whose first line is
//! `-- skipjack:no-transaction` is therefore applied by [`migrate`] itself:
//! statement by statement, outside any transaction, then recorded in
//! refinery's history table exactly as refinery records one.
//!
//! The schema check accepts a window of schemas, not one version, so builds
//! of two versions can serve from one database during a rolling upgrade
//! (docs/upgrades.md): a process needs every migration up to
//! [`REQUIRED_VERSION`], runs at the newest schema version it knows and
//! finds applied ([`Schema`]), and accepts newer migrations that declare
//! themselves compatible with that version (table `schema_compat`).

use crate::tls::{PgTls, SslMode, TlsError};
use clap::Args;
use refinery::{Migration, Target};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("migrations");
}

mod sql {
    crate::sql::sql_files!("db" {
        APPLIED_MIGRATIONS => "applied_migrations.sql",
        SCHEMA_COMPAT => "schema_compat.sql",
        RECORD_MIGRATION => "record_migration.sql",
        MIGRATION_APPLIED => "migration_applied.sql",
        MIGRATE_LOCK => "migrate_lock.sql",
    });
}

/// The newest migration this build's code cannot run without: a process
/// refuses to start on a database that lacks it. Code that uses a newer
/// migration's objects asks [`Schema::has`] first, so this build also runs
/// on a database one expand migration behind (and can be deployed before
/// it, or rolled back past it).
pub const REQUIRED_VERSION: i32 = 5;

/// First line of a migration that must run outside a transaction.
const NO_TRANSACTION: &str = "-- skipjack:no-transaction";

/// How often a no-transaction statement that timed out waiting for a lock
/// (`lock_timeout`) is tried again before the migration fails.
const LOCK_RETRIES: u32 = 5;

/// Database errors that stop a process at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` does not parse.
    #[error("invalid DATABASE_URL: {0}")]
    InvalidUrl(String),
    /// The TLS settings of the URL.
    #[error("database TLS settings: {0}")]
    Tls(#[from] TlsError),
    /// The database could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Migrations this process needs are missing.
    #[error(
        "the database is not migrated: it lacks {}: run `skipjack migrate` (this process needs schema version {required}; the database is at {})",
        migration_list(missing),
        applied.map_or("none".to_owned(), |v| v.to_string())
    )]
    NotMigrated {
        /// The newest applied migration, if any.
        applied: Option<i32>,
        /// The schema version the process needs.
        required: i32,
        /// The missing migrations, `V{n}__{name}`, oldest first.
        missing: Vec<String>,
    },
    /// A migration newer than the process does not declare itself
    /// compatible with the process's schema version.
    #[error(
        "the database has migration {migration}, which {}; this process runs at schema version {running}: deploy a build that knows {migration}",
        match oldest_compatible {
            Some(oldest) => format!("works only with builds at schema version {oldest} or newer"),
            None => "declares no compatibility with older builds".to_owned(),
        }
    )]
    Incompatible {
        /// `V{n}__{name}`.
        migration: String,
        /// The process's schema version.
        running: i32,
        /// What the migration declares in `schema_compat`, if anything.
        oldest_compatible: Option<i32>,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// Any other database error.
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

/// The database every binary uses when `DATABASE_URL` is not set: the
/// local server and database `scripts/run.sh` sets up (user `postgres`, no
/// password: trust authentication on 127.0.0.1).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/skipjack";

/// Where the database is.
#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://user@localhost/skipjack. TLS comes
    /// from its `sslmode` / `sslrootcert` / `sslcert` / `sslkey` parameters,
    /// as with libpq. May point at PgBouncer in transaction mode.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Postgres URL of a direct (session) connection, for what transaction
    /// pooling breaks: LISTEN and session advisory locks (queue gauges
    /// leader, vacuum), and maintenance. Unset: DATABASE_URL.
    #[arg(long, env = "SKIPJACK_DIRECT_DATABASE_URL", hide_env_values = true)]
    pub direct_database_url: Option<String>,
    /// Connections in this process's pool.
    #[arg(long, env = "SKIPJACK_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Longest wait for a pooled connection before a request fails.
    #[arg(long, env = "SKIPJACK_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,
}

impl std::fmt::Debug for DatabaseArgs {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &"***")
            .field(
                "direct_database_url",
                &self.direct_database_url.as_ref().map(|_| "***"),
            )
            .field("db_pool_size", &self.db_pool_size)
            .finish()
    }
}

/// Connections of the direct pool: the LISTEN connections (one in a
/// worker; two in the API, long-polls and streams), the gauges leader's,
/// and one for maintenance in workers.
pub const DIRECT_POOL_SIZE: u32 = 4;

impl DatabaseArgs {
    /// The direct pool's settings, or `None` when there is no separate
    /// direct URL (then the main pool serves as the direct one).
    pub fn direct_db_config(&self, application_name: &str) -> Option<DbConfig> {
        let url = self
            .direct_database_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())?;
        Some(DbConfig {
            url: url.to_owned(),
            pool_size: DIRECT_POOL_SIZE,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            application_name: format!("{application_name}-direct"),
        })
    }

    /// The database settings, with `application_name` for Postgres.
    pub fn db_config(&self, application_name: &str) -> DbConfig {
        DbConfig {
            url: self.database_url.clone(),
            pool_size: self.db_pool_size,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            application_name: application_name.to_owned(),
        }
    }
}

/// Opens a connection pool. Fails fast when the database is unreachable.
pub async fn connect(config: &DbConfig) -> Result<PgPool, DbError> {
    pool_options(config)
        .connect_with(connect_options(config)?)
        .await
        .map_err(DbError::Connect)
}

/// The pool for what needs a session of its own: LISTEN, session advisory
/// locks and maintenance. Behind PgBouncer in transaction mode these must
/// bypass it (`config`: the direct URL's settings); without a separate
/// direct URL (`None`) the main pool serves.
pub async fn connect_direct(config: Option<&DbConfig>, pool: &PgPool) -> Result<PgPool, DbError> {
    match config {
        Some(config) => connect(config).await,
        None => Ok(pool.clone()),
    }
}

/// The sqlx options of `config`'s URL: sqlx reads the TLS parameters
/// itself; only libpq's `require` with a root certificate (which verifies
/// the chain) needs saying.
pub fn connect_options(config: &DbConfig) -> Result<PgConnectOptions, DbError> {
    let (_, tls) = PgTls::split_url(&config.url)?;
    let mut options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?
        .application_name(&config.application_name);
    if tls.effective_mode() == SslMode::VerifyCa {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    crate::tls::install_provider();
    Ok(options)
}

fn pool_options(config: &DbConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.acquire_timeout)
        // No ping before every checkout: it costs a round trip on every
        // query (a third of a claim's latency); a dead connection shows up
        // as an error of the query itself, and the pool replaces it.
        .test_before_acquire(false)
}

/// An error with its causes (tokio-postgres keeps the reason of a failed
/// connection, a TLS handshake's included, in the source chain).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
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

/// Creates database `name` on the server of `server_url` (dropping an old
/// one of that name first, its sessions ended), migrates it, and returns
/// its URL. For benchmarks that need a database of their own next to the
/// one they were given, so that they never touch real jobs;
/// [`drop_database`] removes it. `name` is ASCII letters, digits and `_`.
pub async fn create_fresh_database(server_url: &str, name: &str) -> Result<String, DbError> {
    let mut server = server_connection(server_url, name).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut server)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut server)
        .await?;
    sqlx::Connection::close(server).await?;
    let url = with_database(server_url, name);
    migrate(&url).await?;
    Ok(url)
}

/// Drops database `name` on the server of `server_url`, if it exists,
/// ending its sessions (see [`create_fresh_database`]).
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), DbError> {
    let mut server = server_connection(server_url, name).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut server)
        .await?;
    sqlx::Connection::close(server).await?;
    Ok(())
}

/// A connection to `server_url`'s own database, to create or drop database
/// `name` next to it; refuses a name that would need quoting.
async fn server_connection(server_url: &str, name: &str) -> Result<sqlx::PgConnection, DbError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::InvalidUrl(format!(
            "database name {name:?}: only ASCII letters, digits and _"
        )));
    }
    let options = connect_options(&DbConfig {
        url: server_url.to_owned(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(30),
        application_name: "skipjack".to_owned(),
    })?;
    sqlx::ConnectOptions::connect(&options)
        .await
        .map_err(DbError::Connect)
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
/// Connects with the URL's TLS settings, as [`connect`] does.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    migrate_to(url, None).await
}

/// Applies the pending migrations up to version `target` (all when
/// `None`); returns the names of those applied.
pub async fn migrate_to(url: &str, target: Option<u32>) -> Result<Vec<String>, DbError> {
    let (url, tls) = PgTls::split_url(url)?;
    let mut config =
        tokio_postgres::Config::from_str(&url).map_err(|e| DbError::InvalidUrl(e.to_string()))?;
    config.ssl_mode(match tls.effective_mode() {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls.client_config()?);
    let (mut client, connection) = config
        .connect(connector)
        .await
        .map_err(|e| DbError::Migrate(format!("cannot connect: {}", with_causes(&e))))?;
    let driver = tokio::spawn(connection);
    let applied = run_migrations(&mut client, target).await;
    drop(client);
    let _ = driver.await;
    applied
}

/// The schema a process runs at: the newest schema version it knows and
/// found applied when it started. Fixed for the life of the process, so one
/// process never changes behaviour halfway; the processes of the next
/// rollout step pick up a newer schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema {
    version: i32,
}

impl Schema {
    /// The newest schema this build knows: for tests and tools that just
    /// migrated the database themselves.
    pub fn current() -> Schema {
        Schema {
            version: expected_version(),
        }
    }

    /// A process running at `version`: for tests and tools (processes get
    /// theirs from [`check_schema`]).
    pub fn at(version: i32) -> Schema {
        Schema { version }
    }

    /// The schema version.
    pub fn version(self) -> i32 {
        self.version
    }

    /// Whether migration `version` is part of this schema, i.e. its
    /// objects may be used.
    pub fn has(self, version: i32) -> bool {
        self.version >= version
    }
}

/// Checks at start-up that the database holds every migration up to
/// [`REQUIRED_VERSION`] and no newer migration incompatible with this
/// build; returns the schema the process runs at.
pub async fn check_schema(pool: &PgPool) -> Result<Schema, DbError> {
    let applied = applied_migrations(pool).await?;
    let running = start_version(&known_migrations(), &applied, REQUIRED_VERSION)?;
    check_newer(pool, running, &applied).await?;
    Ok(Schema { version: running })
}

/// The check a running process repeats (`/ready`): the database still
/// holds every migration of `schema`, and every newer migration declares
/// itself compatible with it.
pub async fn check_schema_at(pool: &PgPool, schema: Schema) -> Result<(), DbError> {
    let applied = applied_migrations(pool).await?;
    let versions: BTreeSet<i32> = applied.iter().map(|(v, _)| *v).collect();
    let missing = missing_up_to(&known_migrations(), &versions, schema.version);
    if !missing.is_empty() {
        return Err(DbError::NotMigrated {
            applied: versions.last().copied(),
            required: schema.version,
            missing,
        });
    }
    check_newer(pool, schema.version, &applied).await
}

/// `V{n}__{name}` of every migration compiled into this build, oldest first.
fn known_migrations() -> Vec<(i32, String)> {
    let mut known: Vec<(i32, String)> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| (m.version() as i32, m.name().to_owned()))
        .collect();
    known.sort();
    known
}

fn migration_label(version: i32, name: &str) -> String {
    format!("V{version}__{name}")
}

/// "migration V5__x" or "migrations V5__x, V6__y".
fn migration_list(missing: &[String]) -> String {
    match missing {
        [one] => format!("migration {one}"),
        many => format!("migrations {}", many.join(", ")),
    }
}

/// The known migrations up to `version` that are not applied.
fn missing_up_to(known: &[(i32, String)], applied: &BTreeSet<i32>, version: i32) -> Vec<String> {
    known
        .iter()
        .filter(|(v, _)| *v <= version && !applied.contains(v))
        .map(|(v, name)| migration_label(*v, name))
        .collect()
}

/// The schema version a process starting now runs at: the newest known
/// migration that is applied together with every known one before it;
/// an error naming the missing ones when that is below `required`.
fn start_version(
    known: &[(i32, String)],
    applied: &[(i32, String)],
    required: i32,
) -> Result<i32, DbError> {
    let versions: BTreeSet<i32> = applied.iter().map(|(v, _)| *v).collect();
    let missing = missing_up_to(known, &versions, required);
    if !missing.is_empty() {
        return Err(DbError::NotMigrated {
            applied: versions.last().copied(),
            required,
            missing,
        });
    }
    Ok(known
        .iter()
        .take_while(|(v, _)| versions.contains(v))
        .map(|(v, _)| *v)
        .last()
        .unwrap_or(0)
        .max(required))
}

/// The first applied migration newer than `running` that does not declare
/// compatibility with it, as an error.
fn first_incompatible(
    running: i32,
    applied: &[(i32, String)],
    declared: &HashMap<i32, i32>,
) -> Result<(), DbError> {
    for (version, name) in applied.iter().filter(|(v, _)| *v > running) {
        let oldest = declared.get(version).copied();
        if oldest.is_none_or(|oldest| oldest > running) {
            return Err(DbError::Incompatible {
                migration: migration_label(*version, name),
                running,
                oldest_compatible: oldest,
            });
        }
    }
    Ok(())
}

async fn check_newer(
    pool: &PgPool,
    running: i32,
    applied: &[(i32, String)],
) -> Result<(), DbError> {
    if applied.iter().all(|(v, _)| *v <= running) {
        return Ok(());
    }
    let declared: HashMap<i32, i32> = match sqlx::query_as::<_, (i32, i32)>(sql::SCHEMA_COMPAT)
        .bind(running)
        .fetch_all(pool)
        .await
    {
        Ok(rows) => rows.into_iter().collect(),
        // No schema_compat table: nothing is declared.
        Err(e) if undefined_table(&e) => HashMap::new(),
        Err(e) => return Err(DbError::Sqlx(e)),
    };
    first_incompatible(running, applied, &declared)
}

/// The applied migrations, oldest first; none when the history table does
/// not exist yet.
async fn applied_migrations(pool: &PgPool) -> Result<Vec<(i32, String)>, DbError> {
    match sqlx::query_as::<_, (i32, Option<String>)>(sql::APPLIED_MIGRATIONS)
        .fetch_all(pool)
        .await
    {
        Ok(rows) => Ok(rows
            .into_iter()
            .map(|(v, name)| (v, name.unwrap_or_default()))
            .collect()),
        Err(e) if undefined_table(&e) => Ok(Vec::new()),
        Err(e) => Err(DbError::Sqlx(e)),
    }
}

/// 42P01: undefined_table.
fn undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01")
}

/// Applies the pending migrations up to `target` (all when `None`) on
/// `client`; returns the names of those applied. Migrations marked
/// [`NO_TRANSACTION`] are applied by [`apply_without_transaction`], the
/// others by refinery, in version order.
async fn run_migrations(
    client: &mut tokio_postgres::Client,
    target: Option<u32>,
) -> Result<Vec<String>, DbError> {
    let migrate_err = |e: refinery::Error| DbError::Migrate(e.to_string());
    let pg_err = |e: tokio_postgres::Error| DbError::Migrate(e.to_string());
    client
        .batch_execute(sql::MIGRATE_LOCK)
        .await
        .map_err(pg_err)?;
    let mut special: Vec<Migration> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .filter(|m| is_no_transaction(m) && target.is_none_or(|t| m.version() <= t))
        .cloned()
        .collect();
    special.sort_by_key(|m| m.version());
    let mut applied = Vec::new();
    for migration in &special {
        // Everything before it, the usual way.
        let report = embedded::migrations::runner()
            .set_target(Target::Version(migration.version() - 1))
            .run_async(client)
            .await
            .map_err(migrate_err)?;
        applied.extend(report.applied_migrations().iter().map(label_of));
        let version = migration.version() as i32;
        let done: bool = client
            .query_one(sql::MIGRATION_APPLIED, &[&version])
            .await
            .map_err(pg_err)?
            .get(0);
        if !done {
            apply_without_transaction(client, migration).await?;
            applied.push(label_of(migration));
        }
    }
    let runner = embedded::migrations::runner();
    let runner = match target {
        Some(t) => runner.set_target(Target::Version(t)),
        None => runner,
    };
    let report = runner.run_async(client).await.map_err(migrate_err)?;
    applied.extend(report.applied_migrations().iter().map(label_of));
    Ok(applied)
}

fn label_of(m: &Migration) -> String {
    migration_label(m.version() as i32, m.name())
}

fn is_no_transaction(m: &Migration) -> bool {
    m.sql()
        .and_then(|sql| sql.lines().next())
        .is_some_and(|first| first.trim() == NO_TRANSACTION)
}

/// The statements of a no-transaction migration: each ends with `;` at the
/// end of a line; whole-line `--` comments are dropped. Dollar-quoted
/// bodies are refused (a `;` inside one would split it).
fn split_statements(sql: &str) -> Result<Vec<String>, String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        if trimmed.contains("$$") {
            return Err("a no-transaction migration cannot hold dollar-quoted bodies".into());
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            statements.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        statements.push(current);
    }
    Ok(statements)
}

/// Applies `migration` outside a transaction, one statement at a time (a
/// statement that gives up on a lock is tried again), then records it in
/// refinery's history table. Its statements must be safe to run again: a
/// failure part way leaves the earlier ones applied, and the next run
/// starts over.
async fn apply_without_transaction(
    client: &tokio_postgres::Client,
    migration: &Migration,
) -> Result<(), DbError> {
    let label = label_of(migration);
    let fail = |e: String| DbError::Migrate(format!("applying {label}: {e}"));
    let statements = split_statements(migration.sql().unwrap_or_default()).map_err(fail)?;
    tracing::info!(migration = %label, statements = statements.len(), "applying outside a transaction");
    for statement in &statements {
        let mut attempt = 0;
        loop {
            match client.batch_execute(statement).await {
                Ok(()) => break,
                // 55P03: lock_not_available, lock_timeout expired.
                Err(e)
                    if attempt < LOCK_RETRIES
                        && e.code()
                            == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    attempt += 1;
                    tracing::warn!(migration = %label, attempt, "lock not available; trying again");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }
    // The migration's SET commands must not outlive it on this session.
    client
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| fail(e.to_string()))?;
    client
        .execute(
            sql::RECORD_MIGRATION,
            &[
                &(migration.version() as i32),
                &migration.name(),
                &migration.checksum().to_string(),
            ],
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrations(versions: &[i32]) -> Vec<(i32, String)> {
        versions.iter().map(|v| (*v, format!("m{v}"))).collect()
    }

    #[test]
    fn a_process_runs_at_the_newest_schema_it_knows_and_finds_applied() {
        let known = migrations(&[1, 2, 5, 6]);
        assert_eq!(
            start_version(&known, &migrations(&[1, 2, 5]), 5).unwrap(),
            5
        );
        assert_eq!(
            start_version(&known, &migrations(&[1, 2, 5, 6]), 5).unwrap(),
            6
        );
        // Newer than the build: runs at what it knows.
        assert_eq!(
            start_version(&known, &migrations(&[1, 2, 5, 6, 7]), 5).unwrap(),
            6
        );
    }

    #[test]
    fn a_missing_required_migration_is_named() {
        let known = migrations(&[1, 2, 5, 6]);
        let err = start_version(&known, &migrations(&[1, 2]), 5).unwrap_err();
        assert!(matches!(
            &err,
            DbError::NotMigrated { applied: Some(2), required: 5, missing } if missing == &["V5__m5"]
        ));
        assert_eq!(
            err.to_string(),
            "the database is not migrated: it lacks migration V5__m5: run `skipjack migrate` \
             (this process needs schema version 5; the database is at 2)"
        );
        let err = start_version(&known, &[], 5).unwrap_err();
        assert!(
            err.to_string()
                .contains("lacks migrations V1__m1, V2__m2, V5__m5"),
            "{err}"
        );
        assert!(err.to_string().contains("the database is at none"), "{err}");
    }

    #[test]
    fn newer_migrations_must_declare_compatibility() {
        let applied = migrations(&[1, 2, 5, 6, 7]);
        let declared = |pairs: &[(i32, i32)]| pairs.iter().copied().collect::<HashMap<_, _>>();
        assert!(first_incompatible(5, &applied, &declared(&[(6, 5), (7, 4)])).is_ok());
        let err = first_incompatible(5, &applied, &declared(&[(6, 5), (7, 6)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the database has migration V7__m7, which works only with builds at schema version 6 \
             or newer; this process runs at schema version 5: deploy a build that knows V7__m7"
        );
        let err = first_incompatible(5, &applied, &declared(&[(7, 5)])).unwrap_err();
        assert!(matches!(
            err,
            DbError::Incompatible { ref migration, running: 5, oldest_compatible: None } if migration == "V6__m6"
        ));
        // Nothing newer than the process: nothing to declare.
        assert!(first_incompatible(7, &applied, &HashMap::new()).is_ok());
    }

    #[test]
    fn no_transaction_migrations_split_into_statements() {
        let sql = "-- skipjack:no-transaction\n-- a comment; with a semicolon\nSET lock_timeout = '2s';\n\
                   CREATE INDEX CONCURRENTLY x\n    ON t (a);\n\nINSERT INTO s VALUES (1)";
        let statements = split_statements(sql).unwrap();
        assert_eq!(
            statements,
            vec![
                "SET lock_timeout = '2s';\n",
                "CREATE INDEX CONCURRENTLY x\n    ON t (a);\n",
                "INSERT INTO s VALUES (1)\n"
            ]
        );
        assert!(split_statements("DO $$ BEGIN END $$;").is_err());
    }

    #[test]
    fn every_migration_from_v5_on_declares_its_compatibility() {
        // The declaration is the migration's own statement, so a build
        // that runs at an older schema can learn about it.
        for m in embedded::migrations::runner().get_migrations() {
            if (m.version() as i32) < REQUIRED_VERSION {
                continue;
            }
            let sql = m.sql().unwrap_or_default();
            let declares = sql.lines().any(|l| {
                l.trim_start().starts_with(&format!(
                    "INSERT INTO schema_compat (version, oldest_compatible) VALUES ({},",
                    m.version()
                ))
            });
            assert!(declares, "{} declares no row in schema_compat", label_of(m));
        }
        let newest = expected_version();
        assert!(REQUIRED_VERSION <= newest);
    }

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
