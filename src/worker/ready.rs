//! Whether a worker is still claiming, for `/ready`.

use super::Worker;
use crate::health::ReadyCheck;
use crate::metrics::metrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `/ready`'s claim check for `worker`: ready while the worker runs (not
/// shutting down) and its claim loop makes progress: a claim statement
/// succeeded within `stale_after`, or every slot is busy (then the loop
/// rightly waits for a free one). A claim loop that keeps failing (database
/// errors) or has died makes the worker unready.
pub fn claiming_check(
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    stale_after: Duration,
) -> ReadyCheck {
    let last: Mutex<(u64, Instant)> = Mutex::new((worker.claims(), Instant::now()));
    ReadyCheck::new("claiming", move || {
        if shutdown.is_cancelled() {
            return Err("shutting down: no longer claiming".to_owned());
        }
        let claims = worker.claims();
        // Two plain values: usable after a panic elsewhere.
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if claims != last.0 {
            *last = (claims, Instant::now());
            return Ok(());
        }
        let idle = last.1.elapsed();
        let m = metrics();
        if idle <= stale_after || m.worker_slots_busy.get() >= m.worker_slots_total.get() {
            return Ok(());
        }
        Err(format!(
            "no successful claim for {:.0} s while slots are free",
            idle.as_secs_f64()
        ))
    })
}
