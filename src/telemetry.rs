//! Logging: tracing to stderr, JSON or text, filtered by `RUST_LOG`.
//!
//! Logs go to stderr so that commands whose stdout is scripted (`skipjack
//! tenants create`) keep it clean.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `SKIPJACK_LOG_FORMAT` is `json`, `text`,
/// or unset: text on a terminal, JSON otherwise (containers, log shippers).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("SKIPJACK_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
