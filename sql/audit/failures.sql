-- failures.sql: jobs that failed for good in a time window, newest first,
-- with their final error, the attempts they had, and the errors of the
-- attempts before (retries and lease rescues, from job_events).
--
-- Parameters (psql variables: psql -v name=value):
--   from    start of the window on finished_at (timestamptz, default: 24
--           hours ago)
--   to      end of the window, exclusive (default: now)
--   tenant  tenant name or id (default: every tenant)
--   limit   most rows (default 1000)
--
-- earlier_errors lists one line per retried or rescued attempt:
-- "attempt N retried: ERROR". A job failed by the rescuer (its worker died
-- on its last attempt) says so in final_error ("lease expired on attempt
-- N of M").
--
--   psql "$DATABASE_URL" -v from='2025-01-01' -v tenant=acme -f sql/audit/failures.sql
\if :{?from}
\else
\set from ''
\endif
\if :{?to}
\else
\set to ''
\endif
\if :{?tenant}
\else
\set tenant ''
\endif
\if :{?limit}
\else
\set limit 1000
\endif

SELECT h.id AS job_id,
       t.name AS tenant,
       h.conversation_id,
       h.kind,
       h.priority,
       h.attempts,
       h.max_attempts,
       h.error AS final_error,
       ev.retries,
       ev.rescues,
       ev.earlier_errors,
       h.created_at AS submitted_at,
       h.finished_at,
       h.worker
FROM job_history AS h
LEFT JOIN tenants AS t ON t.id = h.tenant_id
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.event = 'retried') AS retries,
           count(*) FILTER (WHERE e.event = 'rescued') AS rescues,
           string_agg(format('attempt %s %s: %s', e.attempt, e.event, e.error), E'\n'
                      ORDER BY e.id) AS earlier_errors
    FROM job_events AS e
    WHERE e.job_id = h.id AND e.event IN ('retried', 'rescued')
) AS ev
WHERE h.state = 'failed'
  AND h.finished_at >= coalesce(nullif(:'from', '')::timestamptz, now() - interval '24 hours')
  AND h.finished_at < coalesce(nullif(:'to', '')::timestamptz, now())
  AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
ORDER BY h.finished_at DESC, h.id
LIMIT :'limit'::bigint;
