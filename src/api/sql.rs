//! The API's own statements, one per file under `sql/api/`. Tenants and
//! keys are `crate::tenants`', jobs are `crate::queue`'s.

crate::sql::sql_files!("api" {
    TRANSACTION_TIME => "transaction_time.sql",
    JOBS_STORED => "jobs_stored.sql",
    QUEUE_BY_TENANT => "queue_by_tenant.sql",
});
