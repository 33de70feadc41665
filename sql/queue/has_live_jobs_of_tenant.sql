-- has_live_jobs_of_tenant: whether any job of tenant $1 is live (queued,
-- delayed, blocked or processing).
SELECT EXISTS (SELECT 1 FROM jobs WHERE tenant_id = $1)
