-- depth_by_tenant_priority: the live queue per tenant and priority, for
-- GET /v1/queue (queue::read::depth_by_tenant_priority).
-- Run by each API process every second or so (never per request): each
-- request reads the snapshot it makes. One row per (tenant, priority) with
-- queued jobs (ready, delayed or blocked), jobs being processed, and the age
-- in seconds of the oldest job ready to run now (NULL when none is); the
-- process sums the rows of a tenant, and of all tenants for the admin view.
-- `jobs` holds live jobs only (finished ones move to job_history), and the
-- backlog is bounded by the admission limits, so the scan stays as small as
-- the queue the API lets grow; the refresher backs off when it gets slow.
SELECT
    tenant_id,
    priority,
    count(*) FILTER (WHERE state = 'queued') AS queued,
    count(*) FILTER (WHERE state = 'processing') AS processing,
    extract(epoch FROM now() - min(run_at) FILTER (
        WHERE state = 'queued' AND NOT blocked AND run_at <= now()))::float8 AS oldest_ready_age_seconds
FROM jobs
WHERE state IN ('queued', 'processing')
GROUP BY tenant_id, priority
