-- retry: puts a failed or cancelled job back in the queue as a new attempt,
-- by hand (an operator or the tenant asked). $1 job id, $2 tenant id (NULL:
-- any tenant, for operators).
--
-- The job keeps its id, payload, idempotency key, created_at and the
-- attempts it used: it moves from job_history back to jobs, queued, with
-- `attempt` where it was (the next claim makes it attempt + 1) and a fresh
-- budget of attempts: max_attempts = attempts + the budget it was given
-- (its max_attempts minus the attempts it had at its last manual retry),
-- at most 100. A 'retried' event with worker 'manual' and the previous
-- error keeps the earlier attempts visible.
--
-- It keeps its place in its conversation: only when no later job of the
-- conversation exists, live or finished. The caller has locked the
-- conversation's row (lock_lane_finished.sql), so this statement's snapshot
-- sees every job enqueued before the lock. The job becomes the
-- conversation's only live job, its head, unblocked.
--
-- One row when the job is in job_history for this tenant: `verdict` is
-- 'retried' (and `state` 'queued'), or why not: 'completed', 'exhausted'
-- (100 attempts used), 'moved_on' (a later job exists), or 'raced' (another
-- statement took the row first). No row: the job is live or does not exist.
WITH target AS (
    SELECT h.*,
           CASE
               WHEN h.state = 'completed' THEN 'completed'
               WHEN h.attempts >= 100 THEN 'exhausted'
               WHEN h.conversation_id IS NOT NULL AND (
                        EXISTS (SELECT 1 FROM jobs j WHERE j.conversation_id = h.conversation_id)
                     OR EXISTS (SELECT 1 FROM job_history l
                                WHERE l.conversation_id = h.conversation_id
                                  AND (l.created_at, l.id) > (h.created_at, h.id)))
                   THEN 'moved_on'
               ELSE 'retry'
           END AS verdict,
           h.max_attempts - coalesce(
               (SELECT e.attempt FROM job_events e
                WHERE e.job_id = h.id AND e.event = 'retried' AND e.worker = 'manual'
                ORDER BY e.id DESC LIMIT 1), 0) AS budget
    FROM job_history h
    WHERE h.id = $1 AND ($2::uuid IS NULL OR h.tenant_id = $2)
    LIMIT 1
),
removed AS (
    DELETE FROM job_history h
    USING target t
    WHERE h.id = t.id AND t.verdict = 'retry'
    RETURNING h.*, t.budget
),
lane AS (
    INSERT INTO conversation_queues AS q (conversation_id, last_seq, live_jobs)
    SELECT conversation_id, 1, 1
    FROM removed
    WHERE conversation_id IS NOT NULL
    ON CONFLICT (conversation_id) DO UPDATE
        SET last_seq = q.last_seq + 1, live_jobs = q.live_jobs + 1
    RETURNING conversation_id, last_seq, live_jobs
),
requeued AS (
    INSERT INTO jobs (id, tenant_id, conversation_id, conversation_seq, kind, priority, state,
                      blocked, payload, idempotency_key, attempt, max_attempts, run_at,
                      created_at, started_at, last_error)
    SELECT r.id, r.tenant_id, r.conversation_id, l.last_seq, r.kind, r.priority, 'queued',
           coalesce(l.live_jobs > 1, false), r.payload, r.idempotency_key, r.attempts,
           least(r.attempts + greatest(r.budget, 1), 100), now(),
           r.created_at, r.started_at, r.error
    FROM removed r
    LEFT JOIN lane l ON l.conversation_id = r.conversation_id
    RETURNING id, tenant_id, attempt, blocked, run_at, last_error
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, next_run_at, worker)
    SELECT id, tenant_id, 'retried', attempt, last_error, run_at, 'manual'
    FROM requeued
),
wake AS (
    SELECT pg_notify('skipjack_jobs', '1')
    FROM requeued
    WHERE NOT blocked
      AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs')
)
SELECT t.id,
       CASE
           WHEN t.verdict <> 'retry' THEN t.verdict
           WHEN EXISTS (SELECT 1 FROM requeued) THEN 'retried'
           ELSE 'raced'
       END AS verdict,
       t.state
FROM target t
CROSS JOIN (SELECT count(*) FROM wake) AS notified
