//! Building the chat handler from the worker process's settings: the
//! provider (and its shared budgets), the optional Redis cache, the history
//! budget and the token meter, each logged without a key or a URL's
//! password.

use super::cache::{CacheError, HistoryCache};
use super::turn::ChatHandler;
use super::{CacheArgs, HistoryArgs};
use crate::db::Schema;
use crate::llm::{self, ConfigError, LlmConfig};
use sqlx::PgPool;

/// Why the chat handler cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The LLM settings do not hold.
    #[error(transparent)]
    Llm(#[from] ConfigError),
    /// The history cache cannot be set up.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The chat handler of a worker process: one provider (and so one HTTP
/// client) for the whole process, and the Redis cache when `REDIS_URL` is
/// set, writing what the process's `schema` allows and sending at most
/// the configured history budget per turn. Logs what it built, never a key
/// or the Redis URL.
pub fn chat_handler(
    pool: PgPool,
    llm: &LlmConfig,
    history: &HistoryArgs,
    cache: &CacheArgs,
    schema: Schema,
) -> Result<ChatHandler, SetupError> {
    let budget = if llm.has_budget() {
        if !schema.has(llm::budget::BUDGET_SCHEMA_VERSION) {
            return Err(SetupError::Llm(ConfigError::Invalid {
                setting: "SKIPJACK_LLM_RPM",
                message: format!(
                    "provider budgets need database schema {} (run `skipjack migrate`); the database is at {}",
                    llm::budget::BUDGET_SCHEMA_VERSION,
                    schema.version()
                ),
            }));
        }
        let labels = llm::pool::Pool::budget_labels(llm)?;
        let limits = llm.budget_limits()?;
        for (label, limits) in labels.iter().zip(&limits) {
            tracing::info!(
                endpoint = %label,
                rpm = limits.rpm,
                tpm = limits.tpm,
                burst = limits.burst,
                "provider budget shared by every worker"
            );
        }
        let budget = llm::budget::Budget::new(
            pool.clone(),
            &llm.model_or_default(),
            labels.into_iter().zip(limits),
        );
        if let Some(budget) = budget
            .clone()
            .filter(|_| schema.has(llm::budget::BUDGET_LIMITS_SCHEMA_VERSION))
        {
            // For the console only: a failure costs its budget section.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = budget.record_limits().await {
                        tracing::warn!(error = %e, "could not record the provider budget limits");
                    }
                });
            }
        }
        budget
    } else {
        None
    };
    let provider = llm::build_provider_with_budget(llm, budget)?;
    tracing::info!(
        provider = provider.name(),
        model = %llm.model_or_default(),
        endpoints = provider.endpoint_stats().len(),
        max_rps = llm.max_rps,
        "LLM provider ready"
    );
    let meter = llm.meter()?;
    if meter.price().is_none()
        && llm
            .price_per_mtok
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
    {
        tracing::warn!(
            model = meter.model(),
            "SKIPJACK_LLM_PRICE_PER_MTOK has no price for this model: its cost stays 0"
        );
    }
    let mut handler = ChatHandler::new(pool, provider)
        .with_schema(schema)
        .with_history_budget(history.history_max_tokens)
        .with_meter(meter);
    tracing::info!(
        max_tokens = history.history_max_tokens,
        "history budget per turn"
    );
    if let Some(config) = cache.cache_config() {
        tracing::info!(
            ttl_s = config.ttl.as_secs(),
            timeout_ms = config.op_timeout.as_millis() as u64,
            "Redis history cache enabled"
        );
        handler = handler.with_cache(HistoryCache::new(&config)?);
    } else {
        tracing::info!("no REDIS_URL: history is read from Postgres");
    }
    Ok(handler)
}
