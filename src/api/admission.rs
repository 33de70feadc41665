//! Backpressure: refuse submissions at once (429 + `Retry-After`) when the
//! queue is deeper than anyone will wait for, and share the places that
//! free up between the refused clients in the order they started waiting.
//!
//! # Limits
//! No request counts anything in the database. A background task re-reads
//! the queued jobs per tenant every `depth_refresh` (250 ms) with one
//! grouped query (`sql/queue/queued_by_tenant.sql`), and between two reads
//! the process adds its own work. The estimate for a scope (global or one
//! tenant) is
//!
//! `depth at the last read + jobs inserted since that read began + pending`
//!
//! where pending are the admitted submissions whose INSERT has not answered
//! yet. A submission is admitted while the estimate stays within the limit
//! (and the line below lets it). Only an INSERT that commits while a read
//! runs can be counted twice (in the read and as inserted after it began),
//! until the next read: the error is on the safe side and lasts one
//! interval. Other API processes' jobs show up at the next read, so with N
//! processes the queue may overshoot by what the others admit in one
//! refresh interval.
//!
//! Higher priorities may go further: priority 5 and above is admitted up to
//! 120% of each limit ([`HIGH_PRIORITY`], [`HIGH_PRIORITY_HEADROOM`]), so
//! urgent work still gets in when routine work fills the queue.
//!
//! # The line
//! Without more, a place that frees up goes to whichever client happens to
//! retry first, and under sustained overload some clients lose that race
//! every time. So the process remembers, per client (a tenant's `user_id`;
//! for `POST /v1/chat/{id}/retry`, the job), when it was first refused in
//! its current streak of refusals, and serves the clients in that order:
//!
//! - A refused client gets a place in the line of the limit that refused it
//!   (the global line, or its tenant's line), ordered by the start of its
//!   streak; it keeps that order when it is refused again, even by the
//!   other limit. Its place is forgotten when it is admitted, or when it
//!   has not come back within [`FORGET_AFTER`] after its hold lapsed.
//! - `Retry-After` says when its turn should come: the clients ahead of it
//!   in its line divided by the rate at which that scope admitted
//!   submissions over the last [`RATE_WINDOW_SECS`] seconds (taken 20%
//!   faster, so that clients come back a little early rather than late),
//!   rounded up, between `SKIPJACK_RETRY_AFTER_SECONDS` and
//!   [`MAX_RETRY_AFTER_SECS`].
//!   The line is spread over time instead of all coming back in the same
//!   second.
//! - From the moment it was told to come back until [`hold_grace`] later, a
//!   client *holds* a place: a submission is admitted only if the free
//!   places of each scope outnumber the clients holding places ahead of it
//!   in that scope's line. A newcomer is behind everyone; a client that
//!   waited longest is admitted first. A client that is not due yet holds
//!   nothing (also between two visits), so free places still go to whoever
//!   asks while nobody ahead is due: the queue does not idle for a client
//!   that is not there.
//! - High priority (5+) is ordered among high priority only: a
//!   high-priority submission counts only the high-priority clients holding
//!   places ahead of it, so urgent work does not queue behind routine work.
//!
//! The bound: a due client loses a free place only to clients that have
//! waited longer and are due too, and there are finitely many of them,
//! none added. Between its visits (after a refusal, until it is due again)
//! it holds nothing, so a place that frees then can go to a later client
//! when nobody ahead is due; telling clients early (`EARLY`) makes that rare under a steady
//! overload (clients come back a little before their turn, so the head of
//! the line is always due), and each refusal brings it closer to the head.
//! Under a steady overload a client waits about (clients ahead) /
//! (admissions per second): measured in BENCHMARKS.md ("Fair admission").

//! The line costs no database work: one short lock per submission, a map
//! lookup, and a walk over the line's head while places are free. At most
//! [`MAX_WAITERS`] clients are remembered per process; past that, a refused
//! newcomer gets the `Retry-After` of the end of the line but no place
//! (it is refused as a newcomer until the line shortens).
//!
//! The line is per API process. With several replicas, each keeps its own
//! and sees the same limits (they come from the database): a client whose
//! retries land on other replicas stands in each of their lines separately
//! and is forgotten by a replica it does not come back to within
//! [`FORGET_AFTER`] of its hold, so retries spread at random over many
//! replicas get a weaker guarantee. Routing a tenant's users to the same
//! replica (a load balancer hashing on the API key or the user) keeps the
//! bound.
//! `SKIPJACK_FAIR_ADMISSION=false` turns the line off: the first client to
//! retry after a place frees takes it, and every 429 says
//! `SKIPJACK_RETRY_AFTER_SECONDS`.
//!
//! # What a refusal stores
//! A refused submission stores nothing in the database. An admitted one
//! holds a [`Ticket`] that is given back if the job turns out not to be
//! inserted (an idempotent repeat, an error). Admission comes first, before
//! any database work, so an idempotent repeat is admitted like a new
//! submission: while the queue is full, a repeat gets a 429 too, and
//! retrying it later is safe.

use super::error::ApiError;
use crate::ids::{JobId, TenantId};
use crate::metrics::metrics;
use crate::queue::Priority;
use sqlx::PgPool;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Priorities from this one up get [`HIGH_PRIORITY_HEADROOM`].
pub const HIGH_PRIORITY: i16 = 5;
/// Extra room above each limit for high-priority work: 20%.
pub const HIGH_PRIORITY_HEADROOM: f64 = 0.2;
/// Clients remembered in the line, per process.
pub const MAX_WAITERS: usize = 10_000;
/// Longest `Retry-After` the line gives.
pub const MAX_RETRY_AFTER_SECS: u64 = 60;
/// Seconds of admissions behind the rate that `Retry-After` divides by.
pub const RATE_WINDOW_SECS: u64 = 5;
/// A client that has not come back this long after its hold lapsed loses
/// its place in the line.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);
/// `Retry-After` assumes admissions this much faster than measured.
const EARLY: f64 = 1.2;
/// How often forgotten clients are swept out of the line.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long past the time it was told a client holds its place: 2 s plus a
/// tenth of its `Retry-After` (clients add jitter to what they are told).
pub fn hold_grace(retry_after_secs: u64) -> Duration {
    Duration::from_secs(2) + Duration::from_millis(retry_after_secs * 100)
}

/// Which limit refused a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The limit of the whole queue (`SKIPJACK_MAX_QUEUE_DEPTH`).
    Global,
    /// The caller's tenant limit (`SKIPJACK_MAX_TENANT_QUEUE_DEPTH`, or
    /// the tenant's own `max_queued`).
    Tenant,
}

impl Scope {
    /// The `scope` label and error field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tenant => "tenant",
        }
    }
}

/// Who is asking, for the line: a hash of the tenant and its user id (or
/// the retried job). Submissions without one are newcomers every time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client(u64);

/// Admissions per second over the last [`RATE_WINDOW_SECS`] seconds (and
/// the current one so far), counted in one-second buckets.
#[derive(Debug, Default)]
struct RateMeter {
    /// Admissions in each second, by second number modulo the ring's size.
    buckets: [u32; RATE_WINDOW_SECS as usize + 1],
    /// The second the newest bucket counts.
    second: u64,
    /// The first admission ever recorded: a young meter divides by the
    /// time it has been counting, not by the whole window.
    first: Option<Duration>,
}

impl RateMeter {
    fn roll(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let n = self.buckets.len() as u64;
        for s in (self.second + 1)..=second.min(self.second + n) {
            self.buckets[(s % n) as usize] = 0;
        }
        self.second = second;
    }

    /// One admission at `at` (since the meter's epoch).
    fn record(&mut self, at: Duration) {
        let second = at.as_secs();
        self.roll(second);
        self.first.get_or_insert(at);
        let n = self.buckets.len() as u64;
        self.buckets[(second % n) as usize] += 1;
    }

    /// Admissions per second over the window ending at `at`, measured over
    /// at least one second.
    fn per_second(&mut self, at: Duration) -> f64 {
        let second = at.as_secs();
        self.roll(second);
        let total: u64 = self.buckets.iter().map(|&b| u64::from(b)).sum();
        let window_start = Duration::from_secs(second.saturating_sub(RATE_WINDOW_SECS));
        let since = self.first.map_or(at, |first| first.max(window_start));
        let covered = at.saturating_sub(since).as_secs_f64().max(1.0);
        total as f64 / covered
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
    /// The tenant's admissions, for its line's `Retry-After`.
    rate: RateMeter,
}

impl Count {
    fn estimate(&self) -> i64 {
        self.depth + (self.inserted - self.base) + self.pending
    }
}

/// Which line a waiting client stands in: the one of the limit that last
/// refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Line {
    Global,
    Tenant(TenantId),
}

/// A waiting client's place, as its line keeps it.
#[derive(Clone, Copy, Debug)]
struct Place {
    client: Client,
    /// When it was told to come back: it holds a place from then...
    due: Instant,
    /// ...until then.
    hold_until: Instant,
    /// Priority 5+ when last refused.
    high: bool,
}

impl Place {
    fn holds(&self, now: Instant) -> bool {
        self.due <= now && now < self.hold_until
    }

    fn forgotten(&self, now: Instant) -> bool {
        now >= self.hold_until + FORGET_AFTER
    }
}

/// A waiting client, as the map by client keeps it.
#[derive(Clone, Copy, Debug)]
struct Waiter {
    line: Line,
    /// Its order in the line: the streak's start, as a sequence number.
    order: u64,
    /// When its streak of refusals began.
    since: Instant,
}

/// The clients waiting for a place, in the order they started waiting.
#[derive(Debug, Default)]
struct WaitingRoom {
    waiters: HashMap<Client, Waiter>,
    lines: HashMap<Line, BTreeMap<u64, Place>>,
    next_order: u64,
}

impl WaitingRoom {
    /// Clients holding places in `line` ahead of `client` (all holders for a
    /// newcomer); for a high-priority submission only high-priority ones.
    /// Stops counting at `enough`.
    fn holding_ahead(
        &self,
        line: Line,
        client: Option<Client>,
        high: bool,
        now: Instant,
        enough: i64,
    ) -> i64 {
        let Some(places) = self.lines.get(&line) else {
            return 0;
        };
        let before = client
            .and_then(|c| self.waiters.get(&c))
            .map_or(u64::MAX, |w| w.order);
        let mut n = 0;
        for place in places.range(..before).map(|(_, p)| p) {
            if place.holds(now) && (place.high || !high) {
                n += 1;
                if n >= enough {
                    break;
                }
            }
        }
        n
    }

    /// Records that `client` was refused by `line`'s limit and returns the
    /// seconds it should wait, from its rank and `rate` (admissions per
    /// second of that scope).
    fn refused(
        &mut self,
        client: Option<Client>,
        line: Line,
        high: bool,
        now: Instant,
        rate: f64,
        min_secs: u64,
    ) -> u64 {
        let known = client.and_then(|c| self.waiters.get(&c).copied());
        let order = match known {
            Some(w) => w.order,
            None => {
                self.next_order += 1;
                self.next_order
            }
        };
        // Move it from the line it stood in, if another.
        if let Some(w) = known {
            if w.line != line {
                self.remove_place(w.line, w.order);
            }
        }
        let places = self.lines.entry(line).or_default();
        let ahead = places
            .range(..order)
            .filter(|(_, p)| !p.forgotten(now))
            .count();
        // Told a little early rather than late: a client back before its
        // turn is refused again with a short wait, one back after it leaves
        // its place to whoever asks.
        let secs = ((ahead as f64 + 1.0) / (rate.max(1.0) * EARLY)).ceil() as u64;
        let secs = secs.clamp(min_secs, MAX_RETRY_AFTER_SECS.max(min_secs));
        let remembered = known.is_some() || self.waiters.len() < MAX_WAITERS;
        if let (Some(client), true) = (client, remembered) {
            // It holds nothing until it is due again: holding on between
            // its visits would keep places free for clients that are away
            // (measured: the queue ran dry; BENCHMARKS.md).
            let due = now + Duration::from_secs(secs);
            places.insert(
                order,
                Place {
                    client,
                    due,
                    hold_until: due + hold_grace(secs),
                    high,
                },
            );
            self.waiters.insert(
                client,
                Waiter {
                    line,
                    order,
                    since: known.map_or(now, |w| w.since),
                },
            );
        }
        secs
    }

    /// `client` was admitted: its streak is over.
    fn admitted(&mut self, client: Option<Client>) {
        if let Some(w) = client.and_then(|c| self.waiters.remove(&c)) {
            self.remove_place(w.line, w.order);
        }
    }

    fn remove_place(&mut self, line: Line, order: u64) {
        if let Some(places) = self.lines.get_mut(&line) {
            places.remove(&order);
            if places.is_empty() {
                self.lines.remove(&line);
            }
        }
    }

    /// Forgets the clients that did not come back; returns how many wait
    /// and the longest streak.
    fn sweep(&mut self, now: Instant) -> (usize, Duration) {
        let waiters = &mut self.waiters;
        self.lines.retain(|_, places| {
            places.retain(|_, p| {
                let keep = !p.forgotten(now);
                if !keep {
                    waiters.remove(&p.client);
                }
                keep
            });
            !places.is_empty()
        });
        let oldest = self
            .waiters
            .values()
            .map(|w| now.saturating_duration_since(w.since))
            .max()
            .unwrap_or_default();
        (self.waiters.len(), oldest)
    }
}

/// What the lock guards.
#[derive(Debug, Default)]
struct Inner {
    tenants: HashMap<TenantId, Count>,
    room: WaitingRoom,
    /// All admissions, for the global line's `Retry-After`.
    global_rate: RateMeter,
    last_sweep: Option<Instant>,
}

/// Admission control for one API process.
pub struct Admission {
    global_limit: i64,
    tenant_default_limit: i64,
    retry_after_secs: u64,
    /// Share free places in the order clients started waiting.
    fair: bool,
    /// The global [`Count`], as atomics: no lock on the hot path.
    global_depth: AtomicI64,
    global_inserted: AtomicI64,
    global_base: AtomicI64,
    global_pending: AtomicI64,
    inner: Mutex<Inner>,
    /// Turns a user id into a [`Client`].
    hasher: RandomState,
    /// Second 0 of the rate meters.
    epoch: Instant,
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
    /// Admission control with the given limits; 429s say at least
    /// `retry_after_secs`. With `fair`, refused clients are served in the
    /// order they started waiting (see the module's documentation).
    pub fn new(
        global_limit: i64,
        tenant_default_limit: i64,
        retry_after_secs: u64,
        fair: bool,
    ) -> Self {
        Admission {
            global_limit,
            tenant_default_limit,
            retry_after_secs,
            fair,
            global_depth: AtomicI64::new(0),
            global_inserted: AtomicI64::new(0),
            global_base: AtomicI64::new(0),
            global_pending: AtomicI64::new(0),
            inner: Mutex::new(Inner::default()),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The client behind a tenant's `user_id`.
    pub fn user(&self, tenant: TenantId, user_id: &str) -> Client {
        Client(self.hasher.hash_one((tenant, 0u8, user_id)))
    }

    /// The client behind a retry of `job`.
    pub fn job(&self, tenant: TenantId, job: JobId) -> Client {
        Client(self.hasher.hash_one((tenant, 1u8, job.0)))
    }

    /// Admits one submission of `tenant` (whose own cap is `tenant_limit`)
    /// at `priority` from `client`, or refuses it with a 429 whose
    /// `Retry-After` says when the client's turn should come.
    pub fn try_admit(
        self: &Arc<Self>,
        tenant: TenantId,
        tenant_limit: Option<i32>,
        priority: Priority,
        client: Option<Client>,
    ) -> Result<Ticket, ApiError> {
        let now = Instant::now();
        let at = now.saturating_duration_since(self.epoch);
        let high = priority.get() >= HIGH_PRIORITY;
        let client = client.filter(|_| self.fair);
        let global_limit = with_headroom(self.global_limit, priority);
        // Take the place first, then check, so concurrent submissions cannot
        // all slip into the last free place.
        self.global_pending.fetch_add(1, Ordering::SeqCst);
        // Places free besides the one just taken.
        let global_free = global_limit - self.global_estimate() + 1;
        let tenant_limit = with_headroom(
            tenant_limit.map_or(self.tenant_default_limit, i64::from),
            priority,
        );
        let mut guard = self.lock();
        let inner = &mut *guard;
        if self.fair {
            self.sweep(inner, now);
        }
        let global_ahead = if self.fair && global_free > 0 {
            inner
                .room
                .holding_ahead(Line::Global, client, high, now, global_free)
        } else {
            0
        };
        let refused = if global_free <= 0 || global_ahead >= global_free {
            Some(Scope::Global)
        } else {
            let count = inner.tenants.entry(tenant).or_default();
            let tenant_free = tenant_limit - count.estimate();
            let tenant_ahead = if self.fair && tenant_free > 0 {
                inner
                    .room
                    .holding_ahead(Line::Tenant(tenant), client, high, now, tenant_free)
            } else {
                0
            };
            if tenant_free <= 0 || tenant_ahead >= tenant_free {
                Some(Scope::Tenant)
            } else {
                count.pending += 1;
                count.rate.record(at);
                None
            }
        };
        let Some(scope) = refused else {
            inner.global_rate.record(at);
            inner.room.admitted(client);
            return Ok(Ticket {
                admission: self.clone(),
                tenant,
                kept: false,
            });
        };
        self.global_pending.fetch_sub(1, Ordering::SeqCst);
        let retry_after_secs = if self.fair {
            let (line, rate) = match scope {
                Scope::Global => (Line::Global, inner.global_rate.per_second(at)),
                Scope::Tenant => (
                    Line::Tenant(tenant),
                    inner
                        .tenants
                        .get_mut(&tenant)
                        .map_or(0.0, |c| c.rate.per_second(at)),
                ),
            };
            inner
                .room
                .refused(client, line, high, now, rate, self.retry_after_secs)
        } else {
            self.retry_after_secs
        };
        drop(guard);
        Err(self.refuse(scope, retry_after_secs))
    }

    fn refuse(&self, scope: Scope, retry_after_secs: u64) -> ApiError {
        metrics()
            .backpressure_rejections
            .with_label_values(&[scope.as_str()])
            .inc();
        ApiError::Backpressure {
            scope: scope.as_str(),
            retry_after_secs,
        }
    }

    /// Forgets the clients that did not come back, at most once per
    /// [`SWEEP_EVERY`], and updates the line's gauges.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        if inner
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY)
        {
            return;
        }
        inner.last_sweep = Some(now);
        let (waiters, oldest) = inner.room.sweep(now);
        let m = metrics();
        m.admission_waiters.set(waiters as i64);
        m.admission_oldest_wait.set(oldest.as_secs_f64());
    }

    /// A pending submission was inserted, or not.
    fn settle(&self, tenant: TenantId, inserted: bool) {
        // Count it inserted before it stops being pending, so the estimate
        // never dips below the truth in between.
        if inserted {
            self.global_inserted.fetch_add(1, Ordering::SeqCst);
        }
        self.global_pending.fetch_sub(1, Ordering::SeqCst);
        let mut inner = self.lock();
        let count = inner.tenants.entry(tenant).or_default();
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
            .tenants
            .iter()
            .map(|(tenant, count)| (*tenant, count.inserted))
            .collect();
        let rows = crate::queue::read::queued_by_tenant(pool).await?;
        let total: i64 = rows.iter().map(|(_, n)| n).sum();
        let depths: HashMap<TenantId, i64> = rows
            .into_iter()
            .filter_map(|(tenant, n)| Some((tenant?, n)))
            .collect();
        self.global_depth.store(total, Ordering::SeqCst);
        self.global_base.store(global_base, Ordering::SeqCst);
        let mut guard = self.lock();
        let inner = &mut *guard;
        for (tenant, count) in inner.tenants.iter_mut() {
            count.depth = depths.get(tenant).copied().unwrap_or(0);
            count.base = tenant_bases.get(tenant).copied().unwrap_or(count.base);
        }
        for (tenant, depth) in depths {
            inner.tenants.entry(tenant).or_default().depth = depth;
        }
        // Forget tenants with nothing queued, nothing in flight and nobody
        // waiting, so the map does not grow with every tenant ever seen.
        let lines = &inner.room.lines;
        inner.tenants.retain(|tenant, c| {
            c.depth > 0
                || c.pending > 0
                || c.inserted != c.base
                || lines.contains_key(&Line::Tenant(*tenant))
        });
        if self.fair {
            self.sweep(inner, Instant::now());
        }
        drop(guard);
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The global estimate.
    pub fn global_estimate(&self) -> i64 {
        self.global_depth.load(Ordering::SeqCst) + self.global_inserted.load(Ordering::SeqCst)
            - self.global_base.load(Ordering::SeqCst)
            + self.global_pending.load(Ordering::SeqCst)
    }

    /// Clients waiting in this process's lines.
    pub fn waiters(&self) -> usize {
        self.lock().room.waiters.len()
    }

    /// Reads completed so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The counts stay usable even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// At most this share of the refresher's time goes to its query: when the
/// grouped count gets slow (a backlog far past the limits, say 1M jobs at
/// ~250 ms), the refresher backs off instead of keeping a core busy.
const MAX_DUTY_CYCLE: f64 = 0.1;

/// Refreshes `admission` every `every` (or less often while the query is
/// slow, see `MAX_DUTY_CYCLE`) until `stop`.
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
    use rand::{Rng, SeedableRng};

    fn p(n: i64) -> Priority {
        Priority::new(n).unwrap()
    }

    fn retry_after(err: ApiError) -> (&'static str, u64) {
        match err {
            ApiError::Backpressure {
                scope,
                retry_after_secs,
            } => (scope, retry_after_secs),
            other => panic!("not a 429: {other:?}"),
        }
    }

    #[test]
    fn limits_hold_and_high_priority_gets_headroom() {
        let admission = Arc::new(Admission::new(100, 10, 1, true));
        let tenant = TenantId::new();
        let tickets: Vec<Ticket> = (0..10)
            .map(|_| admission.try_admit(tenant, None, p(1), None).unwrap())
            .collect();
        let err = admission.try_admit(tenant, None, p(1), None).err().unwrap();
        assert_eq!(retry_after(err).0, "tenant");
        // 20% of 10 more for priority 5.
        let high: Vec<Ticket> = (0..2)
            .map(|_| admission.try_admit(tenant, None, p(5), None).unwrap())
            .collect();
        assert!(admission.try_admit(tenant, None, p(9), None).is_err());
        // A given-back ticket frees its place.
        drop(high);
        assert!(admission.try_admit(tenant, None, p(5), None).is_ok());
        for t in tickets {
            t.keep();
        }
        assert_eq!(admission.global_estimate(), 10);
    }

    #[test]
    fn global_limit_applies_across_tenants() {
        let admission = Arc::new(Admission::new(3, 10, 1, true));
        for _ in 0..3 {
            admission
                .try_admit(TenantId::new(), None, p(1), None)
                .unwrap()
                .keep();
        }
        let err = admission
            .try_admit(TenantId::new(), None, p(1), None)
            .err()
            .unwrap();
        assert_eq!(retry_after(err).0, "global");
        assert_eq!(admission.global_estimate(), 3);
    }

    /// A full queue (`limit` tickets held) and clients `c0, c1, ...`.
    fn full(fair: bool, limit: i64) -> (Arc<Admission>, TenantId, Vec<Ticket>) {
        let admission = Arc::new(Admission::new(limit, 1_000, 1, fair));
        let tenant = TenantId::new();
        let tickets = (0..limit)
            .map(|i| {
                let c = admission.user(tenant, &format!("filler{i}"));
                admission.try_admit(tenant, None, p(1), Some(c)).unwrap()
            })
            .collect();
        (admission, tenant, tickets)
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_spreads_the_line_and_a_client_keeps_its_place() {
        let (admission, tenant, _tickets) = full(true, 5);
        let user = |i: usize| Some(admission.user(tenant, &format!("u{i}")));
        // Nothing admitted in the last seconds: one a second is assumed
        // (taken as 1.2), so each client is told about a second more than
        // the one ahead of it.
        tokio::time::advance(Duration::from_secs(10)).await;
        let told: Vec<u64> = (0..4)
            .map(|i| {
                retry_after(
                    admission
                        .try_admit(tenant, None, p(1), user(i))
                        .err()
                        .unwrap(),
                )
                .1
            })
            .collect();
        assert_eq!(told, [1, 2, 3, 4]);
        assert_eq!(admission.waiters(), 4);
        // u2 comes back early: still third in line, not last.
        tokio::time::advance(Duration::from_millis(500)).await;
        let again = admission
            .try_admit(tenant, None, p(1), user(2))
            .err()
            .unwrap();
        assert_eq!(retry_after(again).1, 3);
        // A newcomer is behind all four.
        let late = admission
            .try_admit(tenant, None, p(1), user(9))
            .err()
            .unwrap();
        assert_eq!(retry_after(late).1, 5);
        // Without the line every 429 says the configured seconds.
        let (plain, tenant, _tickets) = full(false, 5);
        for i in 0..3 {
            let c = Some(plain.user(tenant, &format!("u{i}")));
            let err = plain.try_admit(tenant, None, p(1), c).err().unwrap();
            assert_eq!(retry_after(err).1, 1);
        }
        assert_eq!(plain.waiters(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_client_takes_the_free_place_ahead_of_newcomers() {
        for fair in [true, false] {
            let (admission, tenant, mut tickets) = full(fair, 3);
            let starving = Some(admission.user(tenant, "starving"));
            let newcomer = |i: usize| Some(admission.user(tenant, &format!("new{i}")));
            let err = admission
                .try_admit(tenant, None, p(1), starving)
                .err()
                .unwrap();
            let (_, secs) = retry_after(err);
            // While it waits out its Retry-After, a place frees: nobody is
            // due, so whoever asks gets it (the queue does not idle).
            drop(tickets.pop());
            tickets.push(
                admission
                    .try_admit(tenant, None, p(1), newcomer(0))
                    .unwrap(),
            );
            tokio::time::advance(Duration::from_secs(secs)).await;
            // It is due now; another place frees and newcomers ask first.
            drop(tickets.pop());
            let first = admission.try_admit(tenant, None, p(1), newcomer(1));
            if fair {
                assert_eq!(retry_after(first.err().unwrap()).0, "global");
                let high = admission.try_admit(tenant, None, p(5), newcomer(2));
                // High priority has its own headroom and does not queue
                // behind routine work.
                let high = high.unwrap();
                drop(high);
                let admitted = admission.try_admit(tenant, None, p(1), starving);
                assert!(admitted.is_ok(), "the waiting client gets the place");
                assert_eq!(admission.waiters(), 1, "only the newcomer waits");
            } else {
                // Without the line the newcomer wins the race.
                assert!(first.is_ok());
                assert!(admission.try_admit(tenant, None, p(1), starving).is_err());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_client_that_does_not_come_back_stops_holding_a_place() {
        let (admission, tenant, mut tickets) = full(true, 2);
        let gone = Some(admission.user(tenant, "gone"));
        let (_, secs) = retry_after(admission.try_admit(tenant, None, p(1), gone).err().unwrap());
        drop(tickets.pop());
        tokio::time::advance(Duration::from_secs(secs)).await;
        let newcomer = Some(admission.user(tenant, "newcomer"));
        assert!(admission.try_admit(tenant, None, p(1), newcomer).is_err());
        // Its hold lapses: the place goes to whoever asks.
        tokio::time::advance(hold_grace(secs)).await;
        let _kept = admission.try_admit(tenant, None, p(1), newcomer).unwrap();
        // Later it is forgotten altogether.
        tokio::time::advance(FORGET_AFTER).await;
        admission.lock().last_sweep = None;
        let other = Some(admission.user(tenant, "other"));
        assert!(admission.try_admit(tenant, None, p(1), other).is_err());
        assert_eq!(admission.waiters(), 1, "only the last one refused waits");
    }

    #[tokio::test(start_paused = true)]
    async fn each_tenant_waits_in_its_own_line() {
        // Tenant A is at its own cap; its waiting users must not hold the
        // global places that tenant B can use.
        let admission = Arc::new(Admission::new(6, 2, 1, true));
        let (a, b) = (TenantId::new(), TenantId::new());
        let _a_jobs: Vec<Ticket> = (0..2)
            .map(|_| admission.try_admit(a, None, p(1), None).unwrap())
            .collect();
        for i in 0..5 {
            let c = Some(admission.user(a, &format!("a{i}")));
            let err = admission.try_admit(a, None, p(1), c).err().unwrap();
            assert_eq!(retry_after(err).0, "tenant");
        }
        // All five are due (told 1 to 3 s) and hold places in A's line.
        tokio::time::advance(Duration::from_secs(3)).await;
        let mut b_jobs = Vec::new();
        for i in 0..5 {
            let c = Some(admission.user(b, &format!("b{i}")));
            match admission.try_admit(b, Some(100), p(1), c) {
                Ok(ticket) => b_jobs.push(ticket),
                Err(err) => assert_eq!(retry_after(err).0, "global"),
            }
        }
        assert_eq!(b_jobs.len(), 4, "B fills the global limit");
    }

    /// One simulated client's record: when each of its turns was admitted,
    /// and its longest streak of refusals.
    #[derive(Default)]
    struct Record {
        admitted: Vec<Duration>,
        longest_refused: Duration,
    }

    /// `clients` clients submit against a queue of `limit` places that a
    /// server empties one job every 100 ms (10 a second); an admitted client
    /// thinks 2.5 s ± 0.25 s, a refused one waits Retry-After plus up to 10%, as the
    /// load generator does. Returns each client's record after `run`.
    async fn overload(fair: bool, clients: usize, limit: i64, run: Duration) -> Vec<Record> {
        let admission = Arc::new(Admission::new(limit, 100_000, 1, fair));
        let tenant = TenantId::new();
        let start = Instant::now();
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Ticket>();
        let server = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                match jobs_rx.recv().await {
                    // Done: its place frees.
                    Some(job) => drop(job),
                    None => return,
                }
            }
        });
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (admission, jobs) = (admission.clone(), jobs_tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let client = Some(admission.user(tenant, &format!("c{i}")));
                let mut record = Record::default();
                // Arrive at a random moment of the first second.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
                let mut refused_since = None;
                while start.elapsed() < run {
                    match admission.try_admit(tenant, None, p(1), client) {
                        Ok(ticket) => {
                            let now = start.elapsed();
                            if let Some(since) = refused_since.take() {
                                record.longest_refused = record.longest_refused.max(now - since);
                            }
                            record.admitted.push(now);
                            let _ = jobs.send(ticket);
                            let think = rng.gen_range(2_250..2_750);
                            tokio::time::sleep(Duration::from_millis(think)).await;
                        }
                        Err(err) => {
                            refused_since.get_or_insert(start.elapsed());
                            let secs = retry_after(err).1 as f64;
                            let extra = rng.gen_range(0.0..0.1);
                            tokio::time::sleep(Duration::from_secs_f64(secs * (1.0 + extra))).await;
                        }
                    }
                }
                if let Some(since) = refused_since {
                    record.longest_refused = record.longest_refused.max(run - since);
                }
                record
            }));
        }
        drop(jobs_tx);
        let mut records = Vec::new();
        for task in tasks {
            records.push(task.await.unwrap());
        }
        server.abort();
        records
    }

    /// Longest time a client went without a turn: from the start to its
    /// first admission, between two, and from its last to the end.
    fn longest_gap(record: &Record, run: Duration) -> Duration {
        let mut last = Duration::ZERO;
        let mut gap = Duration::ZERO;
        for &at in record.admitted.iter().chain([run].iter()) {
            gap = gap.max(at.saturating_sub(last));
            last = at;
        }
        gap
    }

    #[tokio::test(start_paused = true)]
    async fn under_constant_overload_no_client_waits_beyond_a_bound() {
        // 300 clients want a turn every ~2.5 s (120 a second); 10 a second
        // are served. In a fair line each client is served about every
        // 300 / 10 = 30 s.
        let run = Duration::from_secs(300);
        let fair = overload(true, 300, 20, run).await;
        let turns: usize = fair.iter().map(|r| r.admitted.len()).sum();
        // Capacity stays used: 10 a second, less the first seconds.
        assert!(turns >= 2_900, "{turns} turns in 300 s");
        let never = fair.iter().filter(|r| r.admitted.is_empty()).count();
        let worst_refused = fair.iter().map(|r| r.longest_refused).max().unwrap();
        let worst_gap = fair.iter().map(|r| longest_gap(r, run)).max().unwrap();
        assert_eq!(never, 0);
        assert!(
            worst_refused <= Duration::from_secs(45),
            "a client was refused for {worst_refused:?}"
        );
        assert!(
            worst_gap <= Duration::from_secs(50),
            "a client went {worst_gap:?} without a turn"
        );

        // Without the line, the same load leaves some client far longer
        // without a turn.
        let unfair = overload(false, 300, 20, run).await;
        let unfair_gap = unfair.iter().map(|r| longest_gap(r, run)).max().unwrap();
        assert!(
            unfair_gap > Duration::from_secs(60),
            "without the line the worst gap was {unfair_gap:?}"
        );
    }
}
