-- latency_percentiles.sql: wait and run time percentiles (p50, p95, p99)
-- by hour and priority, over the jobs that finished in a time window.
--
-- Parameters (psql variables: psql -v name=value):
--   from    start of the window on finished_at (timestamptz, default: 24
--           hours ago)
--   to      end of the window, exclusive (default: now)
--   tenant  tenant name or id (default: every tenant)
--
-- hour is the UTC hour the jobs finished in (job_history is partitioned
-- on finished_at, so the window prunes partitions). wait is submission to
-- first start; run is first start to finish, so a retried job's run
-- includes its backoff. Jobs cancelled before they started have no wait
-- or run and are left out; all times are in seconds.
--
--   psql "$DATABASE_URL" -v from='2025-01-01' -v to='2025-01-02' -f sql/audit/latency_percentiles.sql
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

SELECT date_trunc('hour', h.finished_at AT TIME ZONE 'UTC') AS hour_utc,
       h.priority,
       count(*) AS jobs,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY x.wait_s)::numeric, 3) AS wait_p50_s,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY x.wait_s)::numeric, 3) AS wait_p95_s,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x.wait_s)::numeric, 3) AS wait_p99_s,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY x.run_s)::numeric, 3) AS run_p50_s,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY x.run_s)::numeric, 3) AS run_p95_s,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x.run_s)::numeric, 3) AS run_p99_s
FROM job_history AS h
LEFT JOIN tenants AS t ON t.id = h.tenant_id
CROSS JOIN LATERAL (
    SELECT extract(epoch FROM h.started_at - h.created_at)::float8 AS wait_s,
           extract(epoch FROM h.finished_at - h.started_at)::float8 AS run_s
) AS x
WHERE h.started_at IS NOT NULL
  AND h.finished_at >= coalesce(nullif(:'from', '')::timestamptz, now() - interval '24 hours')
  AND h.finished_at < coalesce(nullif(:'to', '')::timestamptz, now())
  AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
GROUP BY 1, 2
ORDER BY 1, 2 DESC;
