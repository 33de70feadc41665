-- retries_rescues.sql: jobs that were retried (a retryable error: LLM 429,
-- 5xx, timeout) or rescued (their worker stopped renewing the lease: it
-- died, hung or lost the database), newest first, with every such event
-- and the job's state now.
--
-- Parameters (psql variables: psql -v name=value):
--   from    start of the window on the event time (timestamptz, default:
--           24 hours ago)
--   to      end of the window, exclusive (default: now)
--   event   'retried' or 'rescued' (default: both)
--   tenant  tenant name or id (default: every tenant)
--   limit   most rows (default 1000)
--
-- events lists one line per event: "rescued attempt 2 (worker w-1): lease
-- expired". A retry by hand (POST /v1/chat/{id}/retry, skipjack jobs retry)
-- is a 'retried' event with worker 'manual' and the error it retried. For a rescue, worker is the one that lost the lease; many
-- rescues naming one worker point at that worker (docs/runbook.md).
-- Events are kept as long as the job history (SKIPJACK_RETENTION_DAYS).
--
--   psql "$DATABASE_URL" -v event=rescued -f sql/audit/retries_rescues.sql
\if :{?from}
\else
\set from ''
\endif
\if :{?to}
\else
\set to ''
\endif
\if :{?event}
\else
\set event ''
\endif
\if :{?tenant}
\else
\set tenant ''
\endif
\if :{?limit}
\else
\set limit 1000
\endif

SELECT e.job_id,
       t.name AS tenant,
       j.conversation_id,
       j.state AS state_now,
       j.attempts,
       count(*) FILTER (WHERE e.event = 'retried') AS retries,
       count(*) FILTER (WHERE e.event = 'rescued') AS rescues,
       min(e.created_at) AS first_event_at,
       max(e.created_at) AS last_event_at,
       string_agg(format('%s attempt %s (worker %s): %s', e.event, e.attempt,
                         coalesce(e.worker, '?'), coalesce(e.error, '')), E'\n'
                  ORDER BY e.id) AS events
FROM job_events AS e
LEFT JOIN tenants AS t ON t.id = e.tenant_id
LEFT JOIN LATERAL (
    SELECT a.conversation_id, a.state, a.attempts
    FROM all_jobs AS a
    WHERE a.id = e.job_id
    LIMIT 1
) AS j ON true
WHERE e.event IN ('retried', 'rescued')
  AND (:'event' = '' OR e.event = :'event')
  AND e.created_at >= coalesce(nullif(:'from', '')::timestamptz, now() - interval '24 hours')
  AND e.created_at < coalesce(nullif(:'to', '')::timestamptz, now())
  AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
GROUP BY e.job_id, t.name, j.conversation_id, j.state, j.attempts
ORDER BY last_event_at DESC, e.job_id
LIMIT :'limit'::bigint;
