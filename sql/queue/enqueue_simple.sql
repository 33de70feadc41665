-- enqueue_simple: inserts N jobs that have neither an idempotency key nor a
-- conversation, in one statement.
--
-- The common case of enqueue.sql without its idempotency and conversation
-- machinery, which roughly halves the cost of a single-row enqueue. $1 ids
-- uuid[], $2 tenant ids uuid[], $3 kinds text[], $4 priorities smallint[],
-- $5 payloads jsonb[], $6 max attempts integer[], $7 run_at timestamptz[]
-- (NULL: now). Returns the inserted ids in input order, each with now(),
-- the transaction's time and so every inserted job's created_at. Wake-up as in
-- enqueue.sql: one pg_notify, only while a worker waits.
WITH inserted AS (
    INSERT INTO jobs (id, tenant_id, kind, priority, payload, max_attempts, run_at)
    SELECT id, tenant_id, kind, priority, payload, max_attempts, coalesce(run_at, now())
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::smallint[], $5::jsonb[],
                $6::integer[], $7::timestamptz[])
         AS i (id, tenant_id, kind, priority, payload, max_attempts, run_at)
    RETURNING id, run_at
),
wake AS (
    SELECT pg_notify('skipjack_jobs', count(*)::text)
    FROM inserted
    WHERE run_at <= now()
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs')
)
SELECT i.id, now() AS created_at
FROM unnest($1::uuid[]) WITH ORDINALITY AS i (id, ord)
JOIN inserted USING (id)
CROSS JOIN (SELECT count(*) FROM wake) AS notified
ORDER BY i.ord
