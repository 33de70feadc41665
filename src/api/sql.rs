//! The API's own statements, one per file under `sql/api/`. Tenants and
//! keys are `crate::tenants`', jobs are `crate::queue`'s.

pub const TRANSACTION_TIME: &str = include_str!("../../sql/api/transaction_time.sql");
pub const LISTENER_PROBE: &str = include_str!("../../sql/api/listener_probe.sql");
