-- cancel: moves a queued job to job_history as 'cancelled', with an event.
--
-- $1 job id, $2 tenant id (NULL: any tenant, for operators), $3 reason.
-- Only queued jobs (blocked or not) can be cancelled; a job being processed
-- or already finished yields no row, and the caller reads its state to say
-- why. The caller locks the conversation's row first (lock_lane.sql), the
-- order every finishing statement takes its locks in; if the cancelled job
-- was its conversation's head, unblock.sql runs next in the same transaction.
WITH done AS (
    DELETE FROM jobs
    WHERE id = $1 AND state = 'queued' AND ($2::uuid IS NULL OR tenant_id = $2)
    RETURNING *
),
history AS (
    INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                             idempotency_key, attempts, max_attempts, result, error, worker,
                             input_tokens, output_tokens, created_at, started_at, finished_at)
    SELECT id, tenant_id, conversation_id, kind, priority, 'cancelled', payload,
           idempotency_key, attempt, max_attempts, NULL, $3, NULL,
           NULL, NULL, created_at, started_at, now()
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error)
    SELECT id, tenant_id, 'cancelled', attempt, $3 FROM done
),
lanes AS (
    UPDATE conversation_queues q
    SET live_jobs = q.live_jobs - 1
    FROM done
    WHERE q.conversation_id = done.conversation_id
),
wake AS (
    SELECT pg_notify('skipjack_done', id::text)
    FROM done
    WHERE EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_done')
)
SELECT d.id, d.conversation_id, d.blocked
FROM done d
CROSS JOIN (SELECT count(*) FROM wake) AS notified
