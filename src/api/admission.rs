//! Backpressure: refuse submissions at once (429 + `Retry-After`) when the
//! queue is deeper than anyone will wait for.
//!
//! No request counts anything in the database. A background task re-reads
//! the queued jobs per tenant every `depth_refresh` (250 ms) with one
//! grouped query (`sql/tenants/queued_by_tenant.sql`), and between two reads
//! the process adds its own work. The estimate for a scope (global or one
//! tenant) is
//!
//! `depth at the last read + jobs inserted since that read began + pending`
//!
//! where pending are the admitted submissions whose INSERT has not answered
//! yet. A submission is admitted while the estimate stays within the limit.
//! Only an INSERT that commits while a read runs can be counted twice (in
//! the read and as inserted after it began), until the next read: the error
//! is on the safe side and lasts one interval. Other API processes' jobs
//! show up at the next read, so with N processes the queue may overshoot by
//! what the others admit in one refresh interval.
//!
//! Higher priorities may go further: priority 5 and above is admitted up to
//! 120% of each limit ([`HIGH_PRIORITY`], [`HIGH_PRIORITY_HEADROOM`]), so
//! urgent work still gets in when routine work fills the queue.
//!
//! A refused submission stores nothing. An admitted one holds a [`Ticket`]
//! that is given back if the job turns out not to be inserted (an
//! idempotent repeat, an error). Admission comes first, before any database
//! work, so an idempotent repeat is admitted like a new submission: while
//! the queue is full, a repeat gets a 429 too, and retrying it later is
//! safe.

use super::error::ApiError;
use crate::ids::TenantId;
use crate::metrics::metrics;
use crate::queue::Priority;
use crate::tenants;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Priorities from this one up get [`HIGH_PRIORITY_HEADROOM`].
pub const HIGH_PRIORITY: i16 = 5;
/// Extra room above each limit for high-priority work: 20%.
pub const HIGH_PRIORITY_HEADROOM: f64 = 0.2;

/// Which limit refused a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tenant => "tenant",
        }
    }
}

/// One scope's estimate: `depth + (inserted - base) + pending`.
#[derive(Debug, Default)]
struct Count {
    /// Queued jobs at the last read.
    depth: i64,
    /// Jobs this process inserted, ever.
    inserted: i64,
    /// `inserted` when the last read began: those are in `depth`.
    base: i64,
    /// Admitted, INSERT not answered yet.
    pending: i64,
}

impl Count {
    fn estimate(&self) -> i64 {
        self.depth + (self.inserted - self.base) + self.pending
    }
}

/// Admission control for one API process.
pub struct Admission {
    global_limit: i64,
    tenant_default_limit: i64,
    retry_after_secs: u64,
    /// The global [`Count`], as atomics: no lock on the hot path.
    global_depth: AtomicI64,
    global_inserted: AtomicI64,
    global_base: AtomicI64,
    global_pending: AtomicI64,
    tenants: Mutex<HashMap<TenantId, Count>>,
    /// Reads completed, for tests and diagnostics.
    refreshes: AtomicU64,
}

/// An admitted submission. [`Ticket::keep`] once its job is inserted;
/// dropped without it (an idempotent repeat, an error), it gives its place
/// back.
pub struct Ticket {
    admission: Arc<Admission>,
    tenant: TenantId,
    kept: bool,
}

impl Ticket {
    /// The job was inserted: its place stays taken until a read counts it.
    pub fn keep(mut self) {
        self.kept = true;
        self.admission.settle(self.tenant, true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.kept {
            self.admission.settle(self.tenant, false);
        }
    }
}

fn with_headroom(limit: i64, priority: Priority) -> i64 {
    if priority.get() >= HIGH_PRIORITY {
        limit + (limit as f64 * HIGH_PRIORITY_HEADROOM).ceil() as i64
    } else {
        limit
    }
}

impl Admission {
    pub fn new(global_limit: i64, tenant_default_limit: i64, retry_after_secs: u64) -> Self {
        Admission {
            global_limit,
            tenant_default_limit,
            retry_after_secs,
            global_depth: AtomicI64::new(0),
            global_inserted: AtomicI64::new(0),
            global_base: AtomicI64::new(0),
            global_pending: AtomicI64::new(0),
            tenants: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Admits one submission of `tenant` (whose own cap is `tenant_limit`)
    /// at `priority`, or refuses it with a 429.
    pub fn try_admit(
        self: &Arc<Self>,
        tenant: TenantId,
        tenant_limit: Option<i32>,
        priority: Priority,
    ) -> Result<Ticket, ApiError> {
        let global_limit = with_headroom(self.global_limit, priority);
        // Take the place first, then check, so concurrent submissions cannot
        // all slip into the last free place.
        self.global_pending.fetch_add(1, Ordering::SeqCst);
        if self.global_estimate() > global_limit {
            self.global_pending.fetch_sub(1, Ordering::SeqCst);
            return Err(self.refuse(Scope::Global));
        }
        let tenant_limit = with_headroom(
            tenant_limit.map_or(self.tenant_default_limit, i64::from),
            priority,
        );
        {
            let mut tenants = self.lock();
            let count = tenants.entry(tenant).or_default();
            if count.estimate() + 1 > tenant_limit {
                drop(tenants);
                self.global_pending.fetch_sub(1, Ordering::SeqCst);
                return Err(self.refuse(Scope::Tenant));
            }
            count.pending += 1;
        }
        Ok(Ticket {
            admission: self.clone(),
            tenant,
            kept: false,
        })
    }

    fn refuse(&self, scope: Scope) -> ApiError {
        metrics()
            .backpressure_rejections
            .with_label_values(&[scope.as_str()])
            .inc();
        ApiError::Backpressure {
            scope: scope.as_str(),
            retry_after_secs: self.retry_after_secs,
        }
    }

    /// A pending submission was inserted, or not.
    fn settle(&self, tenant: TenantId, inserted: bool) {
        // Count it inserted before it stops being pending, so the estimate
        // never dips below the truth in between.
        if inserted {
            self.global_inserted.fetch_add(1, Ordering::SeqCst);
        }
        self.global_pending.fetch_sub(1, Ordering::SeqCst);
        let mut tenants = self.lock();
        let count = tenants.entry(tenant).or_default();
        if inserted {
            count.inserted += 1;
        }
        count.pending -= 1;
    }

    /// Re-reads the queued jobs per tenant.
    pub async fn refresh(&self, pool: &PgPool) -> sqlx::Result<()> {
        // Jobs inserted up to now are committed: the read will count them.
        let global_base = self.global_inserted.load(Ordering::SeqCst);
        let tenant_bases: HashMap<TenantId, i64> = self
            .lock()
            .iter()
            .map(|(tenant, count)| (*tenant, count.inserted))
            .collect();
        let rows = tenants::queued_by_tenant(pool).await?;
        let total: i64 = rows.iter().map(|(_, n)| n).sum();
        let depths: HashMap<TenantId, i64> = rows
            .into_iter()
            .filter_map(|(tenant, n)| Some((tenant?, n)))
            .collect();
        self.global_depth.store(total, Ordering::SeqCst);
        self.global_base.store(global_base, Ordering::SeqCst);
        let mut tenants = self.lock();
        for (tenant, count) in tenants.iter_mut() {
            count.depth = depths.get(tenant).copied().unwrap_or(0);
            count.base = tenant_bases.get(tenant).copied().unwrap_or(count.base);
        }
        for (tenant, depth) in depths {
            tenants.entry(tenant).or_default().depth = depth;
        }
        // Forget tenants with nothing queued and nothing in flight, so the
        // map does not grow with every tenant ever seen.
        tenants.retain(|_, c| c.depth > 0 || c.pending > 0 || c.inserted != c.base);
        drop(tenants);
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The global estimate.
    pub fn global_estimate(&self) -> i64 {
        self.global_depth.load(Ordering::SeqCst) + self.global_inserted.load(Ordering::SeqCst)
            - self.global_base.load(Ordering::SeqCst)
            + self.global_pending.load(Ordering::SeqCst)
    }

    /// Reads completed so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Count>> {
        // The counts stay usable even if a holder panicked.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// At most this share of the refresher's time goes to its query: when the
/// grouped count gets slow (a backlog far past the limits, say 1M jobs at
/// ~250 ms), the refresher backs off instead of keeping a core busy.
const MAX_DUTY_CYCLE: f64 = 0.1;

/// Refreshes `admission` every `every` (or less often while the query is
/// slow, see [`MAX_DUTY_CYCLE`]) until `stop`.
pub fn spawn_refresher(
    admission: Arc<Admission>,
    pool: PgPool,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::ZERO;
        let mut failing = false;
        loop {
            tokio::select! {
                // Shutting down.
                _ = stop.cancelled() => return,
                // Time for the next read.
                _ = tokio::time::sleep(pause) => {}
            }
            let started = std::time::Instant::now();
            match admission.refresh(&pool).await {
                Ok(()) => failing = false,
                Err(error) => {
                    // Keep admitting on the last known depth; log once per
                    // outage, not four times a second.
                    if !failing {
                        tracing::warn!(%error, "cannot refresh the queue depth");
                    }
                    failing = true;
                }
            }
            let took = started.elapsed();
            pause = every.max(took.mul_f64((1.0 - MAX_DUTY_CYCLE) / MAX_DUTY_CYCLE));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i64) -> Priority {
        Priority::new(n).unwrap()
    }

    #[test]
    fn limits_hold_and_high_priority_gets_headroom() {
        let admission = Arc::new(Admission::new(100, 10, 1));
        let tenant = TenantId::new();
        let tickets: Vec<Ticket> = (0..10)
            .map(|_| admission.try_admit(tenant, None, p(1)).unwrap())
            .collect();
        let err = admission.try_admit(tenant, None, p(1)).err().unwrap();
        assert!(matches!(
            err,
            ApiError::Backpressure {
                scope: "tenant",
                ..
            }
        ));
        // 20% of 10 more for priority 5.
        let high: Vec<Ticket> = (0..2)
            .map(|_| admission.try_admit(tenant, None, p(5)).unwrap())
            .collect();
        assert!(admission.try_admit(tenant, None, p(9)).is_err());
        // A given-back ticket frees its place.
        drop(high);
        assert!(admission.try_admit(tenant, None, p(5)).is_ok());
        for t in tickets {
            t.keep();
        }
        assert_eq!(admission.global_estimate(), 10);
    }

    #[test]
    fn global_limit_applies_across_tenants() {
        let admission = Arc::new(Admission::new(3, 10, 1));
        for _ in 0..3 {
            admission
                .try_admit(TenantId::new(), None, p(1))
                .unwrap()
                .keep();
        }
        let err = admission
            .try_admit(TenantId::new(), None, p(1))
            .err()
            .unwrap();
        assert!(matches!(
            err,
            ApiError::Backpressure {
                scope: "global",
                ..
            }
        ));
        assert_eq!(admission.global_estimate(), 3);
    }
}
