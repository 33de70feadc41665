-- prune_events: deletes up to $2 job events created before $1; returns how
-- many. Batched like prune_idempotency_keys.
DELETE FROM job_events
WHERE id IN (SELECT id FROM job_events WHERE created_at < $1 ORDER BY id LIMIT $2)
