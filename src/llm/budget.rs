//! Provider budgets: requests and tokens per minute per upstream endpoint
//! and model, held by every worker process together (`SKIPJACK_LLM_RPM`,
//! `SKIPJACK_LLM_TPM`).
//!
//! The state is one Postgres row per (endpoint, model) in
//! `provider_budgets`; a reservation is one UPDATE of that row
//! (`sql/llm/reserve.sql`), so the database's clock and row lock make the
//! processes agree without talking to each other.
//!
//! ## The algorithm (GCRA)
//!
//! Each budget (requests, tokens) keeps a theoretical arrival time `tat`: the
//! time up to which it is spent. With a limit of `L` per minute and a burst
//! of `b` units, one unit costs `T = 60 s / (L - b)` and the tolerance is
//! `D = b * T`. A reservation of `n` units moves `tat` to
//! `max(tat, now) + n * T` and is granted only if that is at most
//! `now + D`. In any 60-second window the units granted then sum to less
//! than `(60 s + D) / T = L`: never more than the limit, whatever the
//! number of processes, and `b` units may go at once after a quiet spell.
//! The price is the sustained rate, `L - b` per minute (95 % of the limit at
//! the default burst of 5 %).
//!
//! ## Tokens: reservation and correction
//!
//! A call reserves its estimate, input tokens estimated from the text
//! ([`super::estimate_usage`]) plus `max_tokens`: an upper bound of what the
//! provider can count. After the reply the reservation is settled with the
//! usage the provider reported: the difference is charged or given back
//! (`sql/llm/correct.sql`). A failed call is settled at its input estimate.
//! A give-back never uncovers reservations made after this one, so it
//! frees budget fully when the call was short compared with the burst and
//! partly otherwise.
//!
//! ## When there is no budget
//!
//! [`Budget::try_reserve`] never waits: it says how long until the
//! reservation would fit, and the caller ([`super::pool`]) tries another
//! endpoint, waits in place for a very short time, or gives the job back to
//! the queue for that long without using an attempt ([`LlmError::Throttled`]).

use std::time::Duration;

use sqlx::PgPool;

use super::settings::BudgetLimits;
use super::LlmError;
use crate::metrics::metrics;

mod sql {
    crate::sql::sql_files!("llm" {
        RESERVE => "reserve.sql",
        CORRECT => "correct.sql",
        ENSURE => "ensure_budget.sql",
        ENSURE_LIMITS => "ensure_budget_limits.sql",
    });
}

/// The Postgres schema version that has `provider_budgets`.
pub const BUDGET_SCHEMA_VERSION: i32 = 11;

/// The schema version whose `provider_budgets` records the limits
/// ([`Budget::record_limits`]).
pub const BUDGET_LIMITS_SCHEMA_VERSION: i32 = 13;

/// GCRA parameters of one budget, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Gcra {
    /// Seconds per unit (0: no limit).
    interval: f64,
    /// Seconds the budget may run ahead of now.
    tolerance: f64,
    /// Most units one reservation can take (0 when unlimited).
    burst: u64,
    /// The configured limit per minute (0: none).
    limit: u64,
}

impl Gcra {
    fn new(per_minute: u64, burst: u64) -> Self {
        if per_minute < 2 || burst == 0 {
            return Gcra::default();
        }
        let interval = 60.0 / (per_minute - burst) as f64;
        Gcra {
            interval,
            tolerance: interval * burst as f64,
            burst,
            limit: per_minute,
        }
    }

    fn limited(&self) -> bool {
        self.interval > 0.0
    }
}

/// The budgets of one endpoint.
#[derive(Clone, Debug)]
struct EndpointBudget {
    /// The row key and metric label: URL without credentials and position.
    label: String,
    requests: Gcra,
    tokens: Gcra,
}

/// The provider budgets of one process's endpoints for one model.
#[derive(Clone, Debug)]
pub struct Budget {
    pool: PgPool,
    model: String,
    endpoints: Vec<EndpointBudget>,
}

/// A granted reservation, to settle with [`Budget::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The endpoint's position.
    pub endpoint: usize,
    /// Tokens reserved.
    pub tokens: u32,
    /// The budget's token counter right after the reservation.
    reserved_after: i64,
}

/// What [`Budget::try_reserve`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved: make the call, then settle.
    Granted(Reservation),
    /// Not now; it would fit in about this long.
    Wait(Duration),
    /// The request needs more tokens than this endpoint's budget ever lets
    /// through at once.
    TooLarge {
        /// The endpoint's token burst.
        burst: u64,
    },
}

/// The budget key of the endpoint at `index` with URL `url` (already
/// without credentials): never holds a key, and tells apart endpoints that
/// share a URL with different keys.
pub fn endpoint_label(url: &str, index: usize) -> String {
    format!("{url}#{index}")
}

impl Budget {
    /// Budgets for `model` on endpoints labelled and limited as given (in
    /// pool order); `None` when no endpoint has a limit.
    pub fn new(
        pool: PgPool,
        model: &str,
        endpoints: impl IntoIterator<Item = (String, BudgetLimits)>,
    ) -> Option<Budget> {
        let endpoints: Vec<EndpointBudget> = endpoints
            .into_iter()
            .map(|(label, limits)| EndpointBudget {
                label,
                requests: Gcra::new(limits.rpm, limits.request_burst()),
                tokens: Gcra::new(limits.tpm, limits.token_burst()),
            })
            .collect();
        if !endpoints
            .iter()
            .any(|e| e.requests.limited() || e.tokens.limited())
        {
            return None;
        }
        let m = metrics();
        for e in &endpoints {
            for (unit, gcra) in [("requests", &e.requests), ("tokens", &e.tokens)] {
                m.llm_budget_limit
                    .with_label_values(&[&e.label, model, unit])
                    .set(gcra.limit as f64);
                m.llm_budget_used
                    .with_label_values(&[&e.label, model, unit]);
            }
        }
        for how in crate::metrics::BUDGET_WAITS {
            m.llm_budget_waits.with_label_values(&[how]);
        }
        Some(Budget {
            pool,
            model: model.to_owned(),
            endpoints,
        })
    }

    /// Records the limits this process enforces in each endpoint's budget
    /// row (creating it when missing), for the operator console. Needs
    /// schema [`BUDGET_LIMITS_SCHEMA_VERSION`].
    pub async fn record_limits(&self) -> Result<(), sqlx::Error> {
        fn limit(value: u64) -> Option<i64> {
            (value > 0).then(|| i64::try_from(value).unwrap_or(i64::MAX))
        }
        for e in &self.endpoints {
            sqlx::query(sql::ENSURE_LIMITS)
                .bind(&e.label)
                .bind(&self.model)
                .bind(limit(e.requests.limit))
                .bind(limit(e.tokens.limit))
                .bind(limit(e.requests.burst))
                .bind(limit(e.tokens.burst))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints (never, for a built budget).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The label of endpoint `index`.
    pub fn label(&self, index: usize) -> &str {
        &self.endpoints[index].label
    }

    /// Try to reserve one request and `tokens` tokens on endpoint `index`,
    /// now; never waits.
    pub async fn try_reserve(&self, index: usize, tokens: u32) -> Result<Reserve, sqlx::Error> {
        let e = &self.endpoints[index];
        if !e.requests.limited() && !e.tokens.limited() {
            return Ok(Reserve::Granted(Reservation {
                endpoint: index,
                tokens: 0,
                reserved_after: 0,
            }));
        }
        let tokens = if e.tokens.limited() { tokens } else { 0 };
        if e.tokens.limited() && u64::from(tokens) > e.tokens.burst {
            return Ok(Reserve::TooLarge {
                burst: e.tokens.burst,
            });
        }
        for _ in 0..2 {
            let (reserved_after, wait_s, present): (Option<i64>, f64, bool) =
                sqlx::query_as(sql::RESERVE)
                    .bind(&e.label)
                    .bind(&self.model)
                    .bind(e.requests.interval)
                    .bind(e.requests.tolerance)
                    .bind(f64::from(tokens))
                    .bind(e.tokens.interval)
                    .bind(e.tokens.tolerance)
                    .fetch_one(&self.pool)
                    .await?;
            if let Some(reserved_after) = reserved_after {
                let m = metrics();
                m.llm_budget_used
                    .with_label_values(&[&e.label, &self.model, "requests"])
                    .inc();
                return Ok(Reserve::Granted(Reservation {
                    endpoint: index,
                    tokens,
                    reserved_after,
                }));
            }
            if present {
                return Ok(Reserve::Wait(Duration::from_secs_f64(
                    wait_s.clamp(0.0, 3600.0),
                )));
            }
            sqlx::query(sql::ENSURE)
                .bind(&e.label)
                .bind(&self.model)
                .execute(&self.pool)
                .await?;
        }
        // The row was just created and another statement took it all.
        Ok(Reserve::Wait(Duration::ZERO))
    }

    /// Settle `reservation` with the tokens the provider counted: charge
    /// the difference or give it back.
    pub async fn settle(&self, reservation: &Reservation, used: u32) -> Result<(), sqlx::Error> {
        let e = &self.endpoints[reservation.endpoint];
        if !e.tokens.limited() {
            return Ok(());
        }
        metrics()
            .llm_budget_used
            .with_label_values(&[&e.label, &self.model, "tokens"])
            .inc_by(u64::from(used));
        let difference = f64::from(used) - f64::from(reservation.tokens);
        if difference == 0.0 {
            return Ok(());
        }
        sqlx::query(sql::CORRECT)
            .bind(&e.label)
            .bind(&self.model)
            .bind(difference)
            .bind(e.tokens.interval)
            .bind(reservation.reserved_after)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The error of a call that found no budget on any endpoint for `wait`.
pub fn throttled(wait: Duration) -> LlmError {
    LlmError::Throttled {
        message: format!(
            "no provider budget (SKIPJACK_LLM_RPM / SKIPJACK_LLM_TPM) for {} ms",
            wait.as_millis()
        ),
        wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_never_lets_more_than_the_limit_into_a_minute() {
        let limits = BudgetLimits {
            rpm: 600,
            tpm: 100_000,
            burst: 0.05,
        };
        let r = Gcra::new(limits.rpm, limits.request_burst());
        assert_eq!(r.burst, 30);
        // (60 s + tolerance) / interval is the most a window can take.
        let most = (60.0 + r.tolerance) / r.interval;
        assert!((most - 600.0).abs() < 1e-9, "{most}");
        let t = Gcra::new(limits.tpm, limits.token_burst());
        assert_eq!(t.burst, 5_000);
        assert!(((60.0 + t.tolerance) / t.interval - 100_000.0).abs() < 1e-6);
        assert_eq!(r.limit, 600);
        assert!(!Gcra::new(0, 0).limited());
    }
}
