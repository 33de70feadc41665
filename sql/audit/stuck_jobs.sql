-- stuck_jobs.sql: jobs being processed that look stuck: their lease
-- expired (the worker died or hung and no rescuer has taken them back
-- yet), or their current attempt has been running longer than max_run.
-- Also how many later turns of the same conversation wait behind each.
--
-- Parameters (psql variables: psql -v name=value):
--   max_run  how long an attempt may run before it counts as stuck
--            (interval, default '10 minutes'; an LLM call is seconds)
--
-- attempt_running_s is an upper bound: the current attempt was claimed at
-- or after the job's last requeue (retry, rescue or release) or, on its
-- first attempt, at started_at. A lease that expired while the workers'
-- maintenance runs is rescued within seconds; one that stays expired means
-- no worker is rescuing (docs/runbook.md, "A stuck conversation").
--
--   psql "$DATABASE_URL" -v max_run='2 minutes' -f sql/audit/stuck_jobs.sql
\if :{?max_run}
\else
\set max_run '10 minutes'
\endif

SELECT j.id AS job_id,
       t.name AS tenant,
       j.conversation_id,
       j.kind,
       j.priority,
       j.attempt,
       j.max_attempts,
       j.lease_owner AS worker,
       CASE WHEN j.lease_expires_at < now() THEN 'lease expired'
            ELSE 'running longer than ' || :'max_run'
       END AS reason,
       j.lease_expires_at,
       round(extract(epoch FROM now() - a.since)::numeric, 1) AS attempt_running_s,
       j.started_at AS first_started_at,
       (SELECT count(*)
        FROM jobs AS b
        WHERE b.conversation_id = j.conversation_id AND b.id <> j.id) AS waiting_behind
FROM jobs AS j
LEFT JOIN tenants AS t ON t.id = j.tenant_id
CROSS JOIN LATERAL (
    SELECT coalesce(max(e.created_at), j.started_at) AS since
    FROM job_events AS e
    WHERE e.job_id = j.id AND e.event IN ('retried', 'rescued', 'released')
) AS a
WHERE j.state = 'processing'
  AND (j.lease_expires_at < now() OR a.since < now() - :'max_run'::interval)
ORDER BY a.since, j.id;
