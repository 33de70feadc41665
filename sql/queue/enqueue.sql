-- enqueue: inserts N jobs in one statement (N = 1 for a single enqueue).
--
-- $1 ids uuid[], $2 tenant ids uuid[], $3 conversation ids uuid[],
-- $4 kinds text[], $5 priorities smallint[], $6 payloads jsonb[],
-- $7 idempotency keys text[], $8 max attempts integer[], $9 run_at timestamptz[]
-- (a NULL run_at means now), $10 request fingerprints bytea[] (stored with
-- new keys). One row per input, in input order: (ord, job_id, inserted,
-- fingerprint, now). `inserted` is false when the idempotency key already named a
-- job; job_id is then that job and fingerprint the one stored with the key
-- (the caller compares it with its own), or job_id is NULL when the key was
-- taken by a transaction this statement's snapshot cannot see yet (the
-- caller looks it up again).
--
-- Locks are taken in key order (idempotency keys, then conversation rows), so
-- two concurrent batches cannot deadlock. Conversation order: the upsert on
-- conversation_queues locks each conversation's row and counts
-- its live jobs; a job whose conversation already had live work starts out
-- blocked. Wake-up: one pg_notify for the whole statement, and only when a
-- worker is waiting and something became claimable now. A replayed key is
-- looked up by a LATERAL probe of its primary key, which no plan can turn
-- into a scan of the whole table (see sql/chat/histories.sql).
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::smallint[],
                $6::jsonb[], $7::text[], $8::integer[], $9::timestamptz[], $10::bytea[])
         WITH ORDINALITY AS i (id, tenant_id, conversation_id, kind, priority,
                               payload, idempotency_key, max_attempts, run_at,
                               fingerprint, ord)
),
new_keys AS (
    INSERT INTO idempotency_keys (tenant_id, key, job_id, fingerprint)
    SELECT coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'), idempotency_key, id,
           fingerprint
    FROM input
    WHERE idempotency_key IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING job_id
),
accepted AS (
    SELECT input.*,
           row_number() OVER (PARTITION BY conversation_id ORDER BY ord) AS lane_pos,
           count(*) OVER (PARTITION BY conversation_id) AS lane_count
    FROM input
    WHERE idempotency_key IS NULL OR id IN (SELECT job_id FROM new_keys)
),
lanes AS (
    INSERT INTO conversation_queues AS q (conversation_id, last_seq, live_jobs)
    SELECT conversation_id, count(*), count(*)
    FROM accepted
    WHERE conversation_id IS NOT NULL
    GROUP BY conversation_id
    ORDER BY conversation_id
    ON CONFLICT (conversation_id) DO UPDATE
        SET last_seq = q.last_seq + excluded.last_seq,
            live_jobs = q.live_jobs + excluded.live_jobs
    RETURNING conversation_id, last_seq, live_jobs
),
inserted AS (
    INSERT INTO jobs (id, tenant_id, conversation_id, conversation_seq, kind, priority,
                      blocked, payload, idempotency_key, max_attempts, run_at)
    SELECT a.id, a.tenant_id, a.conversation_id, l.last_seq - a.lane_count + a.lane_pos,
           a.kind, a.priority,
           coalesce(l.live_jobs - a.lane_count + a.lane_pos > 1, false),
           a.payload, a.idempotency_key, a.max_attempts, coalesce(a.run_at, now())
    FROM accepted a
    LEFT JOIN lanes l ON l.conversation_id = a.conversation_id
    RETURNING id, blocked, run_at
),
wake AS (
    SELECT pg_notify('skipjack_jobs', count(*)::text)
    FROM inserted
    WHERE NOT blocked AND run_at <= now()
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs')
)
SELECT i.ord, coalesce(n.id, k.job_id) AS job_id, n.id IS NOT NULL AS inserted,
       k.fingerprint,
       -- The transaction's time: every inserted job's created_at.
       now() AS created_at
FROM input i
LEFT JOIN inserted n ON n.id = i.id
LEFT JOIN LATERAL (SELECT k.job_id, k.fingerprint
                   FROM idempotency_keys k
                   WHERE n.id IS NULL
                     AND k.tenant_id = coalesce(i.tenant_id, '00000000-0000-0000-0000-000000000000')
                     AND k.key = i.idempotency_key
                   LIMIT 1) AS k ON true
CROSS JOIN (SELECT count(*) FROM wake) AS notified
ORDER BY i.ord
