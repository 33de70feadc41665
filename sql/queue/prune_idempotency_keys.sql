-- prune_idempotency_keys: deletes up to $2 idempotency keys created before $1
-- whose job is no longer live; returns how many. Batched to keep each delete
-- short; the maintenance loop repeats it until it returns fewer than $2.
DELETE FROM idempotency_keys
WHERE (tenant_id, key) IN (
    SELECT k.tenant_id, k.key
    FROM idempotency_keys k
    WHERE k.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = k.job_id)
    LIMIT $2
)
