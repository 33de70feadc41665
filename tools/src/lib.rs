//! skipjack's tools: the load generator and the benchmarks. They use the
//! `skipjack` library's public API only, and are built apart from the
//! product: `cargo build --bin worker` compiles none of this.
//!
//! - [`loadgen`]: the load generator behind `loadgen` (virtual chat users
//!   against a running API).
//! - The benchmarks, each in a [`Scratch`] database of its own:
//!   [`queue_bench`] (`skipjack-bench queue`: the queue with no-op jobs),
//!   [`fair_bench`] (`skipjack-bench fair`: what one tenant's backlog costs
//!   another), [`cancel_bench`] (`skipjack-bench cancel`: cancel latency),
//!   [`console_bench`] (`skipjack-bench console`: the console's list and
//!   job page), and [`chat_bench`] (`chat-bench`: one chat worker with the
//!   simulated LLM).
//! - [`scratch`]: the scratch database. Their SQL lives in `tools/sql/`.

pub mod cancel_bench;
pub mod chat_bench;
pub mod console_bench;
pub mod fair_bench;
pub mod horizon_bench;
pub mod loadgen;
pub mod queue_bench;
pub mod scratch;
mod sql;

pub use scratch::Scratch;

/// The value at quantile `q` of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
