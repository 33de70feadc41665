-- release: gives back the leases of jobs worker $1 is abandoning at shutdown
-- ($2 ids uuid[]), so another worker takes them at once instead of waiting
-- for the lease to expire. The interrupted attempt is not counted: the job
-- did not fail, its worker stopped. Each gets a 'released' event.
WITH released AS (
    UPDATE jobs
    SET state = 'queued', attempt = attempt - 1, lease_owner = NULL,
        lease_expires_at = NULL, run_at = now()
    WHERE id = ANY($2) AND lease_owner = $1 AND state = 'processing'
    RETURNING id, tenant_id, attempt
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, next_run_at, worker)
    SELECT id, tenant_id, 'released', attempt + 1, 'worker shut down', now(), $1
    FROM released
),
wake AS (
    SELECT pg_notify('skipjack_jobs', count(*)::text)
    FROM released
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs' AND waiter <> $1)
)
SELECT r.id
FROM released r
CROSS JOIN (SELECT count(*) FROM wake) AS notified
