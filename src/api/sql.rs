//! The API's own statements, one per file under `sql/api/`. Tenants and
//! keys are `crate::tenants`', jobs are `crate::queue`'s.

pub const TRANSACTION_TIME: &str = include_str!("../../sql/api/transaction_time.sql");
pub const JOBS_STORED: &str = include_str!("../../sql/api/jobs_stored.sql");
pub const QUEUE_BY_TENANT: &str = include_str!("../../sql/api/queue_by_tenant.sql");
