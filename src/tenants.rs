//! Tenants and their API keys.
//!
//! A key is 256 random bits, shown once when created (`sk_` + base64url) and
//! never stored: the database keeps its SHA-256 (a fast hash is enough for
//! a random 256-bit secret; there is nothing to brute-force) and its first
//! characters, so operators can tell keys apart and revoke one by prefix.
//! Authentication looks the hash up through its unique index and compares
//! the stored hash in constant time. Keys never appear in logs or errors.
//!
//! All SQL lives in `sql/tenants/`.

use crate::ids::TenantId;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use std::fmt;
use subtle::ConstantTimeEq;
use uuid::Uuid;

mod sql {
    crate::sql::sql_files!("tenants" {
        CREATE_TENANT => "create_tenant.sql",
        FIND_TENANT => "find_tenant.sql",
        CREATE_KEY => "create_key.sql",
        FIND_KEYS => "find_keys.sql",
        REVOKE_KEY => "revoke_key.sql",
        AUTHENTICATE => "authenticate.sql",
        SET_SCHEDULING => "set_scheduling.sql",
        SET_SCHEDULING_DEFAULTS => "set_scheduling_defaults.sql",
    });
}

/// Every key starts with this, so a leaked key is recognisable (secret
/// scanners) and a malformed one is refused without a database round trip.
pub const KEY_PREFIX: &str = "sk_";
/// Characters of the key kept in `api_keys.key_prefix`: `sk_` and 8 more
/// (48 of the 256 random bits: enough to tell keys apart, useless to guess).
const STORED_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// Longest string worth hashing as a key; real keys are 46 characters.
const MAX_KEY_LEN: usize = 128;

/// Errors of tenant and key administration.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No tenant has this name or id.
    #[error("no tenant {0:?}")]
    TenantNotFound(String),
    /// The name is in use.
    #[error("a tenant named {0:?} already exists")]
    NameTaken(String),
    /// A field out of range.
    #[error("invalid tenant: {0}")]
    Invalid(String),
    /// No live key has this id or prefix.
    #[error("no unrevoked key with id or prefix {0:?}")]
    KeyNotFound(String),
    /// Several live keys share the prefix.
    #[error("{count} keys have the prefix {prefix:?}: revoke by key id")]
    AmbiguousKey {
        /// The prefix given.
        prefix: String,
        /// How many live keys have it.
        count: usize,
    },
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Shorthand for tenant results.
pub type Result<T = (), E = TenantError> = std::result::Result<T, E>;

/// A new API key. Its `Display` and `Debug` never show the secret: only
/// [`NewKey::secret`] does, for the one place that prints it.
pub struct NewKey {
    /// The key's id.
    pub id: Uuid,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// The first characters, as stored.
    pub prefix: String,
    secret: String,
}

impl NewKey {
    /// The key itself, to hand to the client once.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A tenant, as administration sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// Its unique name.
    pub name: String,
    /// Cap on queued jobs; `None`: the API's default.
    pub max_queued: Option<i32>,
}

/// A tenant's place in the scheduler (docs/scheduling.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Scheduling {
    /// Its share of the workers against other tenants with work at the same
    /// priority (1 to 100).
    pub weight: i16,
    /// Cap on its jobs processing at once; `None`: the shared default.
    pub max_running: Option<i32>,
    /// Its jobs processing now.
    pub running: i32,
}

/// A change to a tenant's scheduling; `None` leaves a setting as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulingChange {
    /// New fair-share weight, if changing.
    pub weight: Option<i16>,
    /// New cap on running jobs, if changing.
    pub max_running: Option<i32>,
    /// Drop the tenant's own cap: the shared default applies.
    pub default_max_running: bool,
}

/// The scheduler's settings shared by every process (`fair_settings`).
#[derive(Clone, Copy, Debug, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct SchedulingDefaults {
    /// A waiting queue's priority rises one level per this many seconds.
    pub aging_seconds: f64,
    /// Cap on running jobs of tenants without their own; `None`: no cap.
    pub default_max_running: Option<i32>,
}

/// Sets tenant `tenant`'s weight and cap on running jobs; the next claims
/// apply them.
pub async fn set_scheduling<'e>(
    executor: impl PgExecutor<'e>,
    tenant: TenantId,
    change: SchedulingChange,
) -> Result<Scheduling> {
    if change.weight.is_some_and(|w| !(1..=100).contains(&w)) {
        return Err(TenantError::Invalid(
            "weight must be between 1 and 100".into(),
        ));
    }
    if change.max_running.is_some_and(|m| m <= 0) {
        return Err(TenantError::Invalid("max running must be positive".into()));
    }
    sqlx::query_as(sql::SET_SCHEDULING)
        .bind(tenant)
        .bind(change.weight)
        .bind(change.max_running)
        .bind(change.default_max_running)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| TenantError::TenantNotFound(tenant.to_string()))
}

/// Changes the scheduler's shared settings: the aging rate and the default
/// cap on a tenant's running jobs (`clear_default_max_running`: no default
/// cap). `None` leaves a setting as it is.
pub async fn set_scheduling_defaults<'e>(
    executor: impl PgExecutor<'e>,
    aging_seconds: Option<f64>,
    default_max_running: Option<i32>,
    clear_default_max_running: bool,
) -> Result<SchedulingDefaults> {
    if aging_seconds.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
        return Err(TenantError::Invalid(
            "aging seconds must be positive".into(),
        ));
    }
    if default_max_running.is_some_and(|m| m <= 0) {
        return Err(TenantError::Invalid("max running must be positive".into()));
    }
    Ok(sqlx::query_as(sql::SET_SCHEDULING_DEFAULTS)
        .bind(aging_seconds)
        .bind(default_max_running)
        .bind(clear_default_max_running)
        .fetch_one(executor)
        .await?)
}

/// Who a valid key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The tenant the key belongs to.
    pub tenant: TenantId,
    /// The tenant's cap on queued jobs; `None`: the API's default.
    pub max_queued: Option<i32>,
}

/// A key that was revoked.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RevokedKey {
    /// The key's id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// The key's first characters, as shown to people.
    pub key_prefix: String,
}

/// SHA-256 of a key: what the database stores and looks keys up by.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// True when `key` could be a key at all (prefix and length), so garbage is
/// refused without a database round trip.
pub fn plausible_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX) && key.len() > STORED_PREFIX_LEN && key.len() <= MAX_KEY_LEN
}

fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Creates tenant `name` (`max_queued`: its queue cap, `None` for the
/// default).
pub async fn create_tenant<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
    max_queued: Option<i32>,
) -> Result<TenantId> {
    if name.is_empty() || name.chars().count() > 200 {
        return Err(TenantError::Invalid(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if max_queued.is_some_and(|m| m <= 0) {
        return Err(TenantError::Invalid("max_queued must be positive".into()));
    }
    sqlx::query_scalar(sql::CREATE_TENANT)
        .bind(TenantId::new())
        .bind(name)
        .bind(max_queued)
        .fetch_one(executor)
        .await
        .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
            // 23505: unique_violation on tenants.name.
            Some(code) if code == "23505" => TenantError::NameTaken(name.to_owned()),
            _ => TenantError::Database(e),
        })
}

/// A tenant by id or by name.
pub async fn find_tenant<'e>(executor: impl PgExecutor<'e>, id_or_name: &str) -> Result<Tenant> {
    sqlx::query_as(sql::FIND_TENANT)
        .bind(id_or_name)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| TenantError::TenantNotFound(id_or_name.to_owned()))
}

/// Creates a new key for `tenant`. The returned secret is shown once; only
/// its hash is stored.
pub async fn create_key<'e>(executor: impl PgExecutor<'e>, tenant: TenantId) -> Result<NewKey> {
    let secret = generate_key();
    let key = NewKey {
        id: Uuid::now_v7(),
        tenant,
        prefix: secret[..STORED_PREFIX_LEN].to_owned(),
        secret,
    };
    sqlx::query(sql::CREATE_KEY)
        .bind(key.id)
        .bind(tenant)
        .bind(&hash_key(&key.secret)[..])
        .bind(&key.prefix)
        .execute(executor)
        .await?;
    Ok(key)
}

/// Creates tenant `name` and its first key, in one transaction.
pub async fn create_tenant_with_key(
    pool: &PgPool,
    name: &str,
    max_queued: Option<i32>,
) -> Result<NewKey> {
    let mut tx = pool.begin().await?;
    let tenant = create_tenant(&mut *tx, name, max_queued).await?;
    let key = create_key(&mut *tx, tenant).await?;
    tx.commit().await?;
    Ok(key)
}

/// Revokes the one unrevoked key whose id or stored prefix is `id_or_prefix`.
/// Revocation is immediate in the database; API processes that cache
/// authentications stop accepting the key within their cache lifetime.
pub async fn revoke_key(pool: &PgPool, id_or_prefix: &str) -> Result<RevokedKey> {
    let mut found: Vec<RevokedKey> = sqlx::query_as(sql::FIND_KEYS)
        .bind(id_or_prefix)
        .fetch_all(pool)
        .await?;
    let key = match found.len() {
        0 => return Err(TenantError::KeyNotFound(id_or_prefix.to_owned())),
        1 => found.remove(0),
        count => {
            return Err(TenantError::AmbiguousKey {
                prefix: id_or_prefix.to_owned(),
                count,
            })
        }
    };
    let revoked = sqlx::query(sql::REVOKE_KEY)
        .bind(key.id)
        .execute(pool)
        .await?
        .rows_affected();
    if revoked == 0 {
        // Revoked by someone else in between: the outcome asked for holds.
        tracing::info!(key_id = %key.id, "key was already revoked");
    }
    Ok(key)
}

/// The tenant `key` belongs to, if it is a valid, unrevoked key.
pub async fn authenticate<'e>(
    executor: impl PgExecutor<'e>,
    key: &str,
) -> sqlx::Result<Option<Authenticated>> {
    if !plausible_key(key) {
        return Ok(None);
    }
    authenticate_hash(executor, &hash_key(key)).await
}

/// [`authenticate`] for a key already hashed with [`hash_key`].
pub async fn authenticate_hash<'e>(
    executor: impl PgExecutor<'e>,
    hash: &[u8; 32],
) -> sqlx::Result<Option<Authenticated>> {
    let row: Option<(Vec<u8>, TenantId, Option<i32>)> = sqlx::query_as(sql::AUTHENTICATE)
        .bind(&hash[..])
        .fetch_optional(executor)
        .await?;
    Ok(row.and_then(|(stored, tenant, max_queued)| {
        // The index lookup already matched the hash; comparing it again in
        // constant time keeps the decision itself free of timing signals.
        bool::from(stored.as_slice().ct_eq(&hash[..]))
            .then_some(Authenticated { tenant, max_queued })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_plausible() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        // 32 bytes in unpadded base64 are 43 characters.
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert!(plausible_key(&a));
        assert!(!plausible_key("sk_short"));
        assert!(!plausible_key(&a.replace("sk_", "pk_")));
        assert_ne!(hash_key(&a), hash_key(&b));
    }

    #[test]
    fn new_key_debug_hides_the_secret() {
        let key = NewKey {
            id: Uuid::nil(),
            tenant: TenantId::new(),
            prefix: "sk_abcdefgh".into(),
            secret: "sk_abcdefghSECRET".into(),
        };
        assert!(!format!("{key:?}").contains("SECRET"));
    }
}
