-- rescue: takes back up to $1 jobs whose lease expired (their worker died or
-- hung). A job with attempts left goes back to the queue at once; one that
-- used its last attempt fails into job_history. Each gets a 'rescued' event.
--
-- Safe to run in every process at once: SKIP LOCKED hands each expired job to
-- one rescuer, and a worker finishing the same job concurrently either wins
-- the row lock first (the job is gone) or is fenced off afterwards.
WITH expired AS (
    SELECT id, lease_owner
    FROM jobs
    WHERE state = 'processing' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
requeued AS (
    UPDATE jobs j
    SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
        run_at = now(), last_error = 'lease expired'
    FROM expired e
    WHERE j.id = e.id AND j.attempt < j.max_attempts
    RETURNING j.id, j.tenant_id, j.attempt, j.run_at, e.lease_owner AS worker
),
done AS (
    DELETE FROM jobs j
    USING expired e
    WHERE j.id = e.id AND j.attempt >= j.max_attempts
    RETURNING j.*
),
history AS (
    INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                             idempotency_key, attempts, max_attempts, result, error, worker,
                             input_tokens, output_tokens, created_at, started_at, finished_at)
    SELECT id, tenant_id, conversation_id, kind, priority, 'failed', payload,
           idempotency_key, attempt, max_attempts, NULL,
           format('lease expired on attempt %s of %s', attempt, max_attempts), lease_owner,
           NULL, NULL, created_at, started_at, now()
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, next_run_at, worker)
    SELECT id, tenant_id, 'rescued', attempt, 'lease expired', run_at, worker FROM requeued
    UNION ALL
    SELECT id, tenant_id, 'rescued', attempt, 'lease expired', NULL, lease_owner FROM done
),
lanes AS (
    -- An upsert rather than UPDATE ... FROM: it takes the row locks in
    -- conversation order, as enqueue.sql does, so the two cannot deadlock.
    -- The row always exists (its enqueue created it); excluded.live_jobs
    -- carries the count to subtract.
    INSERT INTO conversation_queues AS q (conversation_id, last_seq, live_jobs)
    SELECT conversation_id, 0, count(*)
    FROM done
    WHERE conversation_id IS NOT NULL
    GROUP BY conversation_id
    ORDER BY conversation_id
    ON CONFLICT (conversation_id) DO UPDATE SET live_jobs = q.live_jobs - excluded.live_jobs
),
wake_workers AS (
    SELECT pg_notify('skipjack_jobs', count(*)::text)
    FROM requeued
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs')
),
wake_waiters AS (
    SELECT pg_notify('skipjack_done', string_agg(id::text, ','))
    FROM (SELECT id, (row_number() OVER () - 1) / 200 AS chunk FROM done) AS c
    WHERE EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_done')
    GROUP BY chunk
)
SELECT r.id, r.conversation_id, r.state
FROM (SELECT id, conversation_id, 'failed'::job_state AS state FROM done
      UNION ALL
      SELECT id, NULL, 'queued'::job_state FROM requeued) AS r
CROSS JOIN (SELECT count(*) FROM wake_workers) AS notified_workers
CROSS JOIN (SELECT count(*) FROM wake_waiters) AS notified_waiters
