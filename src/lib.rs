//! skipjack: a Postgres-native job system for LLM chat agents.
//!
//! A chat message comes in over REST, becomes a row in Postgres, is claimed
//! by a worker with `SELECT … FOR UPDATE SKIP LOCKED`, answered by an LLM, and
//! polled back. Every process is stateless; everything that matters is a row.
//!
//! # Layout
//! - [`queue`]: the job queue engine (enqueue, claim, finish, leases,
//!   wake-ups, maintenance). All its SQL lives in `sql/queue/`.
//! - [`worker`]: the runtime that claims jobs and runs their handlers.
//! - [`llm`]: LLM providers behind one trait.
//! - [`chat`]: conversations, messages, the chat job's payload.
//! - [`stream`]: streamed replies, from the worker that receives them to
//!   the API replica that serves them as Server-Sent Events.
//! - [`api`]: the REST API (axum): submit, long-poll, cancel, tenants' keys,
//!   group commit, backpressure; `/v1/admin` and the operator console under
//!   `/console` (pages over the same reads and actions).
//!   [`tenants`]: tenants and hashed API keys.
//! - [`db`]: connection pool, migrations, schema check, the database
//!   settings every binary takes. [`tls`]: TLS to
//!   Postgres and Redis (`sslmode`, `rediss://`), rustls only.
//! - [`health`]: `/health`, `/ready` and `/metrics`.
//! - [`metrics`]: Prometheus metric names and the registry.
//! - [`operator`]: jobs for operators (show, list, retry, cancel) behind
//!   `skipjack jobs`.
//! - [`telemetry`], [`signal`]: logging and shutdown signals.
//! - [`webhooks`]: tenants' endpoints told when jobs finish (signed
//!   deliveries run as `webhook` jobs). All its SQL lives in `sql/webhooks/`.
//! - [`ids`]: id newtypes. [`text`]: text Postgres can store (no NUL).
//!
//! The binaries in `src/bin/` only parse settings and wire these together.

pub mod api;
pub mod chat;
pub mod db;
pub mod health;
pub mod ids;
pub mod llm;
pub mod metrics;
pub mod operator;
pub mod queue;
pub mod signal;
mod sql;
pub mod stream;
pub mod telemetry;
pub mod tenants;
pub mod text;
pub mod tls;
pub mod webhooks;
pub mod worker;
