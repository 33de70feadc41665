//! Bearer-key authentication for `/v1`.
//!
//! The key is hashed (SHA-256) at once and only the hash is kept; lookups go
//! through [`tenants::authenticate_hash`]. Successful lookups are cached in
//! the process for `auth_cache_ttl` (5 s by default) so the hot path costs
//! no database round trip; that TTL bounds how late a revocation takes
//! effect. Failed lookups are not cached, so a key created a moment ago
//! works at once. The cache's clock is tokio's, so a test can let the TTL
//! pass with a paused clock.

use super::error::ApiError;
use super::AppState;
use crate::ids::TenantId;
use crate::tenants::{self, Authenticated};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Entries beyond which the cache is cleared rather than grown.
const CACHE_CAPACITY: usize = 10_000;

/// The authenticated tenant of a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The tenant the key belongs to.
    pub tenant: TenantId,
    /// The tenant's own queue cap, if it has one.
    pub max_queued: Option<i32>,
}

/// Looks keys up, with a short-lived cache of successes.
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    /// Key hash → (tenant, when it was looked up).
    cache: Mutex<HashMap<[u8; 32], (Authenticated, Instant)>>,
}

impl Authenticator {
    /// An authenticator over `pool` that remembers a key it found for `ttl`.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Authenticator {
            pool,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of `key`, or `None` for a missing, wrong or revoked key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Authenticated>, ApiError> {
        if !tenants::plausible_key(key) {
            return Ok(None);
        }
        let hash = tenants::hash_key(key);
        if let Some((found, at)) = self.lock().get(&hash) {
            if at.elapsed() < self.ttl {
                return Ok(Some(*found));
            }
        }
        let found = tenants::authenticate_hash(&self.pool, &hash).await?;
        let mut cache = self.lock();
        match found {
            Some(found) if !self.ttl.is_zero() => {
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(hash, (found, Instant::now()));
            }
            _ => {
                cache.remove(&hash);
            }
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Authenticated, Instant)>> {
        // The map stays consistent even if a holder panicked.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key of an `Authorization: Bearer KEY` header, if the request has one.
pub(super) fn bearer_key(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer_key(parts).ok_or(ApiError::Unauthorized)?;
        let found = state
            .auth
            .authenticate(key)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        // The request span (api::observe) logs whose request this is.
        tracing::Span::current().record("tenant_id", tracing::field::display(found.tenant));
        Ok(Caller {
            tenant: found.tenant,
            max_queued: found.max_queued,
        })
    }
}
