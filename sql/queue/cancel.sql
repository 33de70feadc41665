-- cancel: moves a live job (queued or processing) to job_history as
-- 'cancelled', with an event.
--
-- $1 job id, $2 tenant id (NULL: any tenant, for operators), $3 reason.
-- A finished job yields no row, and the caller reads its state to say why.
-- Locks: for a queued job the caller locks the conversation's row first
-- (lock_lane.sql), the order unblock takes them in (a conversation before a
-- blocked job); for a processing job it locks the job's row first
-- (lock_running.sql), the order finish and rescue take them in (the head
-- job, then its conversation). unblock.sql runs next in the same transaction
-- when the cancelled job was its conversation's head.
--
-- A processing job is gone from `jobs` once this commits, so its worker's
-- fenced finish changes nothing (whichever commits first wins); the NOTIFY
-- on 'skipjack_cancel' tells the worker running it to drop the attempt at
-- once. Workers always listen on that channel, so it is sent unconditionally
-- (cancels are rare; the heartbeat's lost-lease check is the fallback).
WITH done AS (
    DELETE FROM jobs
    WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
    RETURNING *
),
history AS (
    INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                             idempotency_key, attempts, max_attempts, result, error, worker,
                             input_tokens, output_tokens, created_at, started_at, finished_at)
    SELECT id, tenant_id, conversation_id, kind, priority, 'cancelled', payload,
           idempotency_key, attempt, max_attempts, NULL, $3, lease_owner,
           NULL, NULL, created_at, started_at, now()
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, worker)
    SELECT id, tenant_id, 'cancelled', attempt, $3, lease_owner FROM done
),
lanes AS (
    UPDATE conversation_queues q
    SET live_jobs = q.live_jobs - 1
    FROM done
    WHERE q.conversation_id = done.conversation_id
),
stop AS (
    SELECT pg_notify('skipjack_cancel', id::text)
    FROM done
    WHERE state = 'processing'
),
wake AS (
    SELECT pg_notify('skipjack_done', id::text)
    FROM done
    WHERE EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_done')
)
SELECT d.id, d.conversation_id, d.blocked, d.state
FROM done d
CROSS JOIN (SELECT count(*) FROM wake) AS notified
CROSS JOIN (SELECT count(*) FROM stop) AS stopped
