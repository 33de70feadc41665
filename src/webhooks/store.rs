//! The `webhooks` table: a tenant's endpoints. Every statement is scoped
//! to the tenant, so another tenant's webhook is exactly like a missing one.

use super::{signature, MAX_WEBHOOKS_PER_TENANT};
use crate::ids::TenantId;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

crate::sql::sql_files!("webhooks" {
    LOCK_TENANT => "lock_tenant.sql",
    CREATE => "create.sql",
    LIST => "list.sql",
    DELETE => "delete.sql",
    TARGET => "target.sql",
});

/// A webhook as its tenant sees it (no secret).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Webhook {
    /// The webhook's id.
    pub id: Uuid,
    /// The endpoint POSTed to.
    pub url: String,
    /// The events it is told of.
    pub events: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A webhook just created, with its secret (shown this once).
#[derive(Clone, Debug)]
pub struct Created {
    /// The webhook as listed from now on.
    pub webhook: Webhook,
    /// The signing secret.
    pub secret: String,
}

/// Where a delivery goes.
#[derive(Clone, sqlx::FromRow)]
pub struct Target {
    /// The endpoint POSTed to.
    pub url: String,
    /// The signing secret.
    pub secret: String,
}

impl std::fmt::Debug for Target {
    // Neither is logged: the secret signs, and the URL may carry a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Target { .. }")
    }
}

/// Errors of [`create`].
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The tenant has as many webhooks as allowed.
    #[error("a tenant may have at most {0} webhooks")]
    TooMany(i64),
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a webhook for `tenant` with a new secret, unless the tenant
/// already has [`MAX_WEBHOOKS_PER_TENANT`]. `url` and `events` must have
/// been validated.
pub async fn create(
    pool: &PgPool,
    tenant: TenantId,
    url: &str,
    events: &[String],
) -> Result<Created, CreateError> {
    let id = Uuid::now_v7();
    let secret = signature::new_secret();
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_TENANT)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    let created: Option<DateTime<Utc>> = sqlx::query_scalar(CREATE)
        .bind(id)
        .bind(tenant)
        .bind(url)
        .bind(&secret)
        .bind(events)
        .bind(MAX_WEBHOOKS_PER_TENANT)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(created_at) = created else {
        return Err(CreateError::TooMany(MAX_WEBHOOKS_PER_TENANT));
    };
    tx.commit().await?;
    Ok(Created {
        webhook: Webhook {
            id,
            url: url.to_owned(),
            events: events.to_vec(),
            created_at,
        },
        secret,
    })
}

/// `tenant`'s webhooks, oldest first.
pub async fn list(pool: &PgPool, tenant: TenantId) -> Result<Vec<Webhook>, sqlx::Error> {
    sqlx::query_as(LIST).bind(tenant).fetch_all(pool).await
}

/// Deletes `tenant`'s webhook `id`; false when it has none such.
pub async fn delete(pool: &PgPool, tenant: TenantId, id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted: Option<Uuid> = sqlx::query_scalar(DELETE)
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    Ok(deleted.is_some())
}

/// The URL and secret of webhook `id`; `None` once it was deleted.
pub async fn target(pool: &PgPool, id: Uuid) -> Result<Option<Target>, sqlx::Error> {
    sqlx::query_as(TARGET).bind(id).fetch_optional(pool).await
}
