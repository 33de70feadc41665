//! The scratch database every benchmark runs in: a migrated database of
//! its own next to the one `DATABASE_URL` names, created fresh (an old one
//! of the same name is dropped first), so that a benchmark never touches
//! real jobs, and dropped afterwards (or kept, to be queried).

use skipjack::db::{self, DbConfig};
use sqlx::PgPool;
use std::time::Duration;

/// A scratch database and a pool on it.
pub struct Scratch {
    /// Connections to the scratch database.
    pub pool: PgPool,
    /// The scratch database's URL.
    pub url: String,
    server_url: String,
    name: String,
}

impl Scratch {
    /// Creates and migrates database `name` (ASCII letters, digits and `_`)
    /// on the server of `server_url`, with a pool of `pool_size`.
    pub async fn create(server_url: &str, name: &str, pool_size: u32) -> anyhow::Result<Self> {
        let url = db::create_fresh_database(server_url, name).await?;
        let pool = connect(&url, pool_size, "skipjack-bench").await?;
        Ok(Scratch {
            pool,
            url,
            server_url: server_url.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another pool on the scratch database, of `pool_size` connections
    /// named `application_name` in `pg_stat_activity`.
    pub async fn connect(&self, pool_size: u32, application_name: &str) -> anyhow::Result<PgPool> {
        connect(&self.url, pool_size, application_name).await
    }

    /// `VACUUM ANALYZE` of the whole database: statistics and visibility
    /// maps for freshly written rows, before measuring.
    pub async fn vacuum_analyze(&self) -> anyhow::Result<()> {
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool and drops the database.
    pub async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        db::drop_database(&self.server_url, &self.name).await?;
        Ok(())
    }

    /// Closes the pool and leaves the database in place.
    pub async fn keep(self) {
        self.pool.close().await;
    }
}

pub(crate) async fn connect(
    url: &str,
    pool_size: u32,
    application_name: &str,
) -> anyhow::Result<PgPool> {
    Ok(db::connect(&DbConfig {
        url: url.to_owned(),
        pool_size,
        acquire_timeout: Duration::from_secs(30),
        application_name: application_name.to_owned(),
    })
    .await?)
}
