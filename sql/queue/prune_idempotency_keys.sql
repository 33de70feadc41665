-- prune_idempotency_keys: deletes up to $2 idempotency keys created before $1
-- (the retention cutoff) whose job is neither live nor kept in job_history
-- (finished at or after $1); returns how many. A key is thus never dropped
-- while its job can still be read, so a client retrying with it finds that
-- job instead of creating another. Run before the partitions older than $1
-- are dropped, so no key outlives its job either. Batched to keep each
-- delete short; the maintenance loop repeats it until it returns fewer than
-- $2.
DELETE FROM idempotency_keys
WHERE (tenant_id, key) IN (
    SELECT k.tenant_id, k.key
    FROM idempotency_keys k
    WHERE k.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = k.job_id)
      AND NOT EXISTS (SELECT 1 FROM job_history h WHERE h.id = k.job_id AND h.finished_at >= $1)
    LIMIT $2
)
