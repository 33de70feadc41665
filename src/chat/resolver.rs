//! Which conversation a chat message goes to: the one the client named,
//! if it is this user's, or the user's default conversation.

use super::store;
use crate::ids::{ConversationId, TenantId};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries beyond which a cache is cleared rather than grown.
const CACHE_CAPACITY: usize = 100_000;

/// Why a conversation cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such conversation of this tenant and user (never says which).
    #[error("conversation not found")]
    NotFound,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Picks the conversation of a chat submission, caching what never changes:
/// a user's default conversation and a conversation's owner. Both are
/// fixed once they exist, so the cache needs no invalidation; a hot
/// submission path costs no conversation query at all.
pub struct Resolver {
    pool: PgPool,
    /// (tenant, user) → the user's default conversation.
    defaults: Mutex<HashMap<(TenantId, String), ConversationId>>,
    /// (tenant, conversation) → its user.
    owners: Mutex<HashMap<(TenantId, ConversationId), String>>,
}

impl Resolver {
    /// A resolver over `pool` with empty caches.
    pub fn new(pool: PgPool) -> Self {
        Resolver {
            pool,
            defaults: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// `requested` if it is this tenant's and this user's conversation
    /// (else 404), or the user's default conversation, created on first use.
    pub async fn resolve(
        &self,
        tenant: TenantId,
        user_id: &str,
        requested: Option<ConversationId>,
    ) -> Result<ConversationId, ResolveError> {
        match requested {
            Some(id) => {
                let cached = lock(&self.owners).get(&(tenant, id)).cloned();
                let owner = match cached {
                    Some(owner) => owner,
                    None => {
                        let owner = store::conversation_user(&self.pool, id, tenant)
                            .await?
                            .ok_or(ResolveError::NotFound)?;
                        self.remember_owner(tenant, id, &owner);
                        owner
                    }
                };
                if owner == user_id {
                    Ok(id)
                } else {
                    Err(ResolveError::NotFound)
                }
            }
            None => {
                let key = (tenant, user_id.to_owned());
                if let Some(id) = lock(&self.defaults).get(&key) {
                    return Ok(*id);
                }
                let mut conn = self.pool.acquire().await?;
                let id = store::default_conversation(&mut conn, tenant, user_id).await?;
                drop(conn);
                let mut defaults = lock(&self.defaults);
                if defaults.len() >= CACHE_CAPACITY {
                    defaults.clear();
                }
                defaults.insert(key, id);
                drop(defaults);
                self.remember_owner(tenant, id, user_id);
                Ok(id)
            }
        }
    }

    /// Records that `conversation` belongs to `user_id`.
    pub fn remember_owner(&self, tenant: TenantId, conversation: ConversationId, user_id: &str) {
        let mut owners = lock(&self.owners);
        if owners.len() >= CACHE_CAPACITY {
            owners.clear();
        }
        owners.insert((tenant, conversation), user_id.to_owned());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
