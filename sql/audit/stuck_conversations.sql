-- stuck_conversations.sql: conversations whose queued turns are not moving,
-- and why. A conversation runs one turn at a time, so one stuck turn holds
-- back every later one (docs/runbook.md, "A stuck conversation", has the
-- fixes).
--
-- Parameters (psql variables: psql -v name=value):
--   max_wait  how long the oldest live turn may have been waiting before
--             the conversation counts as stuck (interval, default
--             '5 minutes')
--
-- problem is one of:
--   lease expired         its running turn's worker is gone and nobody has
--                         rescued it yet (are any workers running?)
--   nothing runnable      every live turn is blocked: no turn can start (an
--                         inconsistency; the runbook unblocks the first)
--   count mismatch        conversation_queues.live_jobs disagrees with the
--                         live turns (an inconsistency; the runbook
--                         recounts it)
--   head delayed          the next turn waits for its retry backoff
--   waiting too long      none of the above, but the oldest turn has waited
--                         longer than max_wait (the queue is behind: scale)
--
--   psql "$DATABASE_URL" -v max_wait='1 minute' -f sql/audit/stuck_conversations.sql
\if :{?max_wait}
\else
\set max_wait '5 minutes'
\endif

WITH live AS (
    SELECT conversation_id,
           count(*) AS live_turns,
           count(*) FILTER (WHERE state = 'processing') AS processing,
           count(*) FILTER (WHERE state = 'queued' AND NOT blocked) AS runnable,
           count(*) FILTER (WHERE blocked) AS blocked,
           min(created_at) AS oldest_submitted_at,
           min(lease_expires_at) AS lease_expires_at,
           min(run_at) FILTER (WHERE state = 'queued' AND NOT blocked) AS head_run_at
    FROM jobs
    WHERE conversation_id IS NOT NULL
    GROUP BY conversation_id
),
diagnosed AS (
    SELECT l.*,
           q.live_jobs AS counted_live_turns,
           CASE
               WHEN l.processing > 0 AND l.lease_expires_at < now() THEN 'lease expired'
               WHEN l.processing = 0 AND l.runnable = 0 THEN 'nothing runnable'
               WHEN q.live_jobs IS DISTINCT FROM l.live_turns THEN 'count mismatch'
               WHEN l.processing = 0 AND l.head_run_at > now() THEN 'head delayed'
               WHEN l.oldest_submitted_at < now() - :'max_wait'::interval THEN 'waiting too long'
           END AS problem
    FROM live AS l
    LEFT JOIN conversation_queues AS q USING (conversation_id)
)
SELECT d.conversation_id,
       t.name AS tenant,
       c.user_id,
       d.problem,
       d.live_turns,
       d.counted_live_turns,
       d.processing,
       d.runnable,
       d.blocked,
       d.oldest_submitted_at,
       round(extract(epoch FROM now() - d.oldest_submitted_at)::numeric, 1) AS oldest_waiting_s,
       d.lease_expires_at,
       d.head_run_at
FROM diagnosed AS d
LEFT JOIN conversations AS c ON c.id = d.conversation_id
LEFT JOIN tenants AS t ON t.id = c.tenant_id
WHERE d.problem IS NOT NULL
ORDER BY d.oldest_submitted_at, d.conversation_id;
