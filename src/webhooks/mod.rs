//! Webhooks: a tenant's HTTPS endpoints told when its jobs finish.
//!
//! # Layout
//! - [`store`]: the `webhooks` table (create with a per-tenant cap, list,
//!   delete, the delivery target). Its SQL lives in `sql/webhooks/`.
//! - [`signature`]: the `Skipjack-Signature` header (HMAC-SHA256 over the
//!   timestamp and the body), made and checked.
//! - [`delivery`]: the `webhook` job kind's handler, which POSTs one event,
//!   and the worker's delivery settings (timeout, attempts).
//!
//! # Enqueueing
//! Deliveries are jobs of kind [`WEBHOOK_KIND`] in the ordinary queue, one
//! per (finished job, matching webhook), inserted by a statement-level
//! trigger on `job_history` (migration V8): whatever finishes a job
//! (a worker's finish, a cancel, the rescuer, a release at shutdown), the
//! deliveries commit with it or not at all. Deliveries never produce events
//! themselves. See docs/webhooks.md.

pub mod delivery;
pub mod signature;
pub mod store;

pub use delivery::{WebhookArgs, WebhookConfig, WebhookHandler};

/// The job kind of a delivery.
pub const WEBHOOK_KIND: &str = "webhook";

/// The event types a webhook can receive.
pub const EVENT_TYPES: [&str; 3] = ["job.completed", "job.failed", "job.cancelled"];

/// The header carrying `t=UNIX,v1=HEX`.
pub const SIGNATURE_HEADER: &str = "skipjack-signature";
/// The header carrying the event id, the same on every attempt of a
/// delivery: receivers deduplicate on it.
pub const ID_HEADER: &str = "skipjack-webhook-id";
/// The header carrying the attempt number (1 on the first).
pub const ATTEMPT_HEADER: &str = "skipjack-webhook-attempt";

/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Most webhooks one tenant may have.
pub const MAX_WEBHOOKS_PER_TENANT: i64 = 10;
