-- throughput.sql: jobs finished per minute, by outcome, with the rate in
-- jobs per second. Every minute of the window has a row, so an outage shows
-- as zeros rather than as a gap.
--
-- Parameters (psql variables: psql -v name=value):
--   from    start of the window (timestamptz, default: the start of the
--           minute an hour ago)
--   to      end of the window, exclusive (default: now)
--   tenant  tenant name or id (default: every tenant)
--
--   psql "$DATABASE_URL" -v from='2025-01-01 12:00Z' -v to='2025-01-01 13:00Z' -f sql/audit/throughput.sql
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

WITH window_ AS (
    SELECT coalesce(nullif(:'from', '')::timestamptz,
                    date_trunc('minute', now()) - interval '1 hour') AS lo,
           coalesce(nullif(:'to', '')::timestamptz, now()) AS hi
),
minutes AS (
    SELECT generate_series(date_trunc('minute', lo),
                           date_trunc('minute', hi - interval '1 microsecond'),
                           interval '1 minute') AS minute
    FROM window_
),
finished AS (
    SELECT date_trunc('minute', h.finished_at) AS minute,
           count(*) FILTER (WHERE h.state = 'completed') AS completed,
           count(*) FILTER (WHERE h.state = 'failed') AS failed,
           count(*) FILTER (WHERE h.state = 'cancelled') AS cancelled,
           count(*) AS finished
    FROM job_history AS h
    CROSS JOIN window_ AS w
    LEFT JOIN tenants AS t ON t.id = h.tenant_id
    WHERE h.finished_at >= w.lo AND h.finished_at < w.hi
      AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
    GROUP BY 1
)
SELECT m.minute,
       coalesce(f.completed, 0) AS completed,
       coalesce(f.failed, 0) AS failed,
       coalesce(f.cancelled, 0) AS cancelled,
       coalesce(f.finished, 0) AS finished,
       round(coalesce(f.finished, 0) / 60.0, 2) AS jobs_per_s
FROM minutes AS m
LEFT JOIN finished AS f USING (minute)
ORDER BY m.minute;
