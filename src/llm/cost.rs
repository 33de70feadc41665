//! Token accounting and estimated spend: what the LLM costs, per provider
//! and model, as Prometheus counters.
//!
//! Providers report usage in tokens; what a token costs is not something
//! they say, so it is configured: `SKIPJACK_LLM_PRICE_PER_MTOK` is a price
//! table in US dollars per million tokens,
//!
//! ```text
//! claude-sonnet-4-5=3/15,gpt-4o-mini=0.15/0.6,*=1/2
//! ```
//!
//! each entry `MODEL=INPUT/OUTPUT`; `*=INPUT/OUTPUT` (or a bare
//! `INPUT/OUTPUT`) prices every model not listed. The worker counts each
//! answer's tokens in `skipjack_llm_tokens_total{direction,provider,model}`
//! and adds `input × in_price + output × out_price` (divided by a million)
//! to `skipjack_llm_cost_usd_total{provider,model}`. A model without a price
//! costs nothing in the metric (the counter exists and stays 0): the
//! estimate is as good as the table, and the token counters are exact
//! either way, so the cost can also be recomputed in PromQL from them.
//!
//! The `model` label is the configured model name (`SKIPJACK_LLM_MODEL` or
//! the provider's default), not the name an upstream echoes back (often a
//! dated variant): it is the name prices are set for, it is known at
//! start-up (so the series exist from the first scrape), and a worker has
//! exactly one, so the label stays bounded.

use super::error::ConfigError;
use super::Usage;
use crate::metrics::{metrics, TOKEN_DIRECTIONS};
use std::collections::HashMap;

/// The setting's name, for error messages.
pub const PRICE_SETTING: &str = "SKIPJACK_LLM_PRICE_PER_MTOK";

/// US dollars per million tokens, each way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Dollars per million input tokens.
    pub input_per_mtok: f64,
    /// Dollars per million output tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// The estimated cost of `usage`, in dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (f64::from(usage.input_tokens) * self.input_per_mtok
            + f64::from(usage.output_tokens) * self.output_per_mtok)
            / 1e6
    }
}

/// The parsed `SKIPJACK_LLM_PRICE_PER_MTOK`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    models: HashMap<String, Price>,
    default: Option<Price>,
}

impl PriceTable {
    /// Parses `MODEL=IN/OUT,…` (see the module docs). Empty: no prices.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            setting: PRICE_SETTING,
            message,
        };
        let mut table = PriceTable::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // The price is after the last `=`: model names may hold `/`.
            let (model, price) = match entry.rsplit_once('=') {
                Some((model, price)) => (model.trim(), price),
                None => ("*", entry),
            };
            let (input, output) = price.split_once('/').ok_or_else(|| {
                invalid(format!(
                    "`{entry}`: expected MODEL=INPUT/OUTPUT (dollars per million tokens)"
                ))
            })?;
            let number = |s: &str| -> Result<f64, ConfigError> {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .ok_or_else(|| {
                        invalid(format!("`{entry}`: `{s}` is not a non-negative number"))
                    })
            };
            let price = Price {
                input_per_mtok: number(input)?,
                output_per_mtok: number(output)?,
            };
            if model.is_empty() {
                return Err(invalid(format!("`{entry}`: empty model name")));
            }
            let previous = if model == "*" {
                table.default.replace(price)
            } else {
                table.models.insert(model.to_owned(), price)
            };
            if previous.is_some() {
                return Err(invalid(format!("`{model}` is priced twice")));
            }
        }
        Ok(table)
    }

    /// The price of `model`: its own entry, else the `*` entry.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        self.models.get(model).copied().or(self.default)
    }
}

/// Counts one process's tokens and estimated spend for its provider and
/// model.
#[derive(Clone, Debug)]
pub struct TokenMeter {
    provider: &'static str,
    model: String,
    price: Option<Price>,
}

impl TokenMeter {
    /// A meter for `provider`/`model` at `price`. Creates the token, cost,
    /// latency series of this provider and model at 0, so they exist from
    /// the first scrape.
    pub fn new(provider: &'static str, model: impl Into<String>, price: Option<Price>) -> Self {
        let meter = TokenMeter {
            provider,
            model: model.into(),
            price,
        };
        let m = metrics();
        for direction in TOKEN_DIRECTIONS {
            m.llm_tokens
                .with_label_values(&[direction, meter.provider, &meter.model]);
        }
        m.llm_cost
            .with_label_values(&[meter.provider, &meter.model]);
        m.llm_request.with_label_values(&[meter.provider]);
        meter
    }

    /// A meter that creates no series until it counts something (for a
    /// handler whose model is not known yet).
    pub fn unannounced(provider: &'static str, model: impl Into<String>) -> Self {
        TokenMeter {
            provider,
            model: model.into(),
            price: None,
        }
    }

    /// The model label.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The price used, if the table has one for the model.
    pub fn price(&self) -> Option<Price> {
        self.price
    }

    /// Counts one answer's usage.
    pub fn record(&self, usage: &Usage) {
        let m = metrics();
        let [input, output] = TOKEN_DIRECTIONS;
        m.llm_tokens
            .with_label_values(&[input, self.provider, &self.model])
            .inc_by(u64::from(usage.input_tokens));
        m.llm_tokens
            .with_label_values(&[output, self.provider, &self.model])
            .inc_by(u64::from(usage.output_tokens));
        if let Some(price) = self.price {
            m.llm_cost
                .with_label_values(&[self.provider, &self.model])
                .inc_by(price.cost(usage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_models_default_and_rejects_nonsense() {
        let t = PriceTable::parse(" claude-sonnet-4-5=3/15, openai/gpt-4o=2.5/10 ,*=1/2").unwrap();
        assert_eq!(
            t.price_of("claude-sonnet-4-5"),
            Some(Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0
            })
        );
        assert_eq!(t.price_of("openai/gpt-4o").unwrap().output_per_mtok, 10.0);
        assert_eq!(t.price_of("other").unwrap().input_per_mtok, 1.0);
        assert_eq!(PriceTable::parse("").unwrap().price_of("x"), None);
        assert_eq!(
            PriceTable::parse("0.5/1.5").unwrap().price_of("x"),
            Some(Price {
                input_per_mtok: 0.5,
                output_per_mtok: 1.5
            })
        );
        for bad in ["m=3", "m=-1/2", "m=a/b", "=1/2", "m=1/2,m=3/4", "1/2,*=3/4"] {
            let err = PriceTable::parse(bad).unwrap_err().to_string();
            assert!(err.contains(PRICE_SETTING), "{bad}: {err}");
        }
    }

    #[test]
    fn cost_is_tokens_times_price_per_million() {
        let price = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 200,
        };
        assert!((price.cost(&usage) - 0.006).abs() < 1e-12);
    }
}
