-- release: gives back the leases of jobs worker $1 is abandoning at shutdown
-- ($2 ids uuid[]), so another worker takes them at once instead of waiting
-- for the lease to expire. The interrupted attempt counts: a job that always
-- outlives the shutdown grace period must run out of attempts, not be
-- released forever. A job with attempts left goes back to the queue at
-- once; one that used its last attempt fails into job_history. Each gets a
-- 'released' event. Conversations whose head job failed here are unblocked
-- by unblock.sql, run next in the same transaction.
WITH held AS (
    SELECT id
    FROM jobs
    WHERE id = ANY($2) AND lease_owner = $1 AND state = 'processing'
    FOR UPDATE
),
released AS (
    UPDATE jobs j
    SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, run_at = now(),
        last_error = 'worker shut down'
    FROM held h
    WHERE j.id = h.id AND j.attempt < j.max_attempts
    RETURNING j.id, j.tenant_id, j.attempt
),
done AS (
    DELETE FROM jobs j
    USING held h
    WHERE j.id = h.id AND j.attempt >= j.max_attempts
    RETURNING j.*
),
history AS (
    INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                             idempotency_key, attempts, max_attempts, result, error, worker,
                             input_tokens, output_tokens, created_at, started_at, finished_at)
    SELECT id, tenant_id, conversation_id, kind, priority, 'failed', payload,
           idempotency_key, attempt, max_attempts, NULL,
           format('worker shut down during attempt %s of %s', attempt, max_attempts),
           lease_owner, NULL, NULL, created_at, started_at, now()
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, next_run_at, worker)
    SELECT id, tenant_id, 'released', attempt, 'worker shut down', now(), $1 FROM released
    UNION ALL
    SELECT id, tenant_id, 'released', attempt, 'worker shut down', NULL, $1 FROM done
),
lanes AS (
    -- As in finish.sql: an upsert takes the row locks in conversation order.
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
    FROM released
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs' AND waiter <> $1)
),
wake_waiters AS (
    SELECT pg_notify('skipjack_done', string_agg(id::text, ','))
    FROM done
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_done')
)
SELECT r.id, r.conversation_id, r.state
FROM (SELECT id, conversation_id, 'failed'::job_state AS state FROM done
      UNION ALL
      SELECT id, NULL, 'queued'::job_state FROM released) AS r
CROSS JOIN (SELECT count(*) FROM wake_workers) AS notified_workers
CROSS JOIN (SELECT count(*) FROM wake_waiters) AS notified_waiters
