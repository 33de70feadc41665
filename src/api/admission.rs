//! Backpressure: refuse submissions at once (429 + `Retry-After`) when the
//! queue is deeper than anyone will wait for.
//!
//! No request counts anything in the database. A background task re-reads
//! the queued jobs per tenant every `depth_refresh` (250 ms) with one
//! grouped query (`sql/tenants/queued_by_tenant.sql`), and between two reads
//! the process adds its own admissions. The estimate for a scope (global or
//! one tenant) is `depth at the last read + admissions since that read
//! began`; a submission is admitted while the estimate is below the limit.
//! Other API processes' admissions show up at the next read, so with N
//! processes the queue may overshoot by at most what they admit in one
//! refresh interval.
//!
//! Higher priorities may go further: priority 5 and above is admitted up to
//! 120% of each limit ([`HIGH_PRIORITY`], [`HIGH_PRIORITY_HEADROOM`]), so
//! urgent work still gets in when routine work fills the queue.
//!
//! A refused submission stores nothing. An admitted one holds a [`Ticket`]
//! that is given back if the job turns out not to be inserted (an
//! idempotent repeat, an error).

use super::error::ApiError;
use crate::ids::TenantId;
use crate::metrics::metrics;
use crate::queue::Priority;
use crate::tenants;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
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

/// One scope's estimate: `depth + (admitted - base)`.
#[derive(Debug, Default)]
struct Count {
    /// Queued jobs at the last read.
    depth: i64,
    /// This process's admissions, ever (minus the given-back tickets).
    admitted: i64,
    /// `admitted` when the last read began: admissions before that are in
    /// `depth` already (or were never inserted).
    base: i64,
}

impl Count {
    fn estimate(&self) -> i64 {
        self.depth + (self.admitted - self.base)
    }
}

/// Admission control for one API process.
pub struct Admission {
    global_limit: i64,
    tenant_default_limit: i64,
    retry_after_secs: u64,
    /// Global depth at the last read.
    global_depth: AtomicI64,
    /// Global admissions ever, and their value when the last read began.
    global_admitted: AtomicI64,
    global_base: AtomicI64,
    tenants: Mutex<HashMap<TenantId, Count>>,
}

/// An admitted submission; dropped without [`Ticket::keep`], it gives its
/// place back.
pub struct Ticket {
    admission: Arc<Admission>,
    tenant: TenantId,
    kept: bool,
}

impl Ticket {
    /// The job was inserted: its place stays taken until the next read
    /// counts it.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.kept {
            self.admission.give_back(self.tenant);
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
            global_admitted: AtomicI64::new(0),
            global_base: AtomicI64::new(0),
            tenants: Mutex::new(HashMap::new()),
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
        let admitted = self.global_admitted.fetch_add(1, Ordering::SeqCst) + 1;
        let global = self.global_depth.load(Ordering::SeqCst)
            + (admitted - self.global_base.load(Ordering::SeqCst));
        if global > global_limit {
            self.global_admitted.fetch_sub(1, Ordering::SeqCst);
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
                self.global_admitted.fetch_sub(1, Ordering::SeqCst);
                return Err(self.refuse(Scope::Tenant));
            }
            count.admitted += 1;
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

    fn give_back(&self, tenant: TenantId) {
        self.global_admitted.fetch_sub(1, Ordering::SeqCst);
        if let Some(count) = self.lock().get_mut(&tenant) {
            count.admitted -= 1;
        }
    }

    /// Re-reads the queued jobs per tenant.
    pub async fn refresh(&self, pool: &PgPool) -> sqlx::Result<()> {
        // Admissions up to now are either committed (and will be counted)
        // or still in flight (and may not be): counting the in-flight ones
        // twice for one interval errs on the safe side.
        let global_base = self.global_admitted.load(Ordering::SeqCst);
        let tenant_bases: HashMap<TenantId, i64> = self
            .lock()
            .iter()
            .map(|(tenant, count)| (*tenant, count.admitted))
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
        // Forget tenants with nothing queued and nothing pending, so the map
        // does not grow with every tenant ever seen.
        tenants.retain(|_, c| c.depth > 0 || c.admitted != c.base);
        Ok(())
    }

    /// The global estimate (depth + own admissions since the last read).
    pub fn global_estimate(&self) -> i64 {
        self.global_depth.load(Ordering::SeqCst) + self.global_admitted.load(Ordering::SeqCst)
            - self.global_base.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Count>> {
        // The counts stay usable even if a holder panicked.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refreshes `admission` every `every` until `stop`.
pub fn spawn_refresher(
    admission: Arc<Admission>,
    pool: PgPool,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                // Shutting down.
                _ = stop.cancelled() => return,
                // Time for the next read.
                _ = tick.tick() => {}
            }
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
