-- stats_strict: stats.sql for processes running at a schema before V10
-- (a rolling upgrade's first steps), over the jobs_claim index those
-- schemas have; no per-tenant waits.
--
-- The live queue at a glance: queued jobs by priority (ready, delayed
-- or blocked behind their conversation), jobs being processed, and the age
-- in seconds of the oldest job that is ready to run (0 when none is).
--
-- Run every few seconds by one process for the Prometheus gauges
-- (src/queue/gauges.rs), and on demand by GET /v1/queue and `skipjack stats`.
-- Each part reads an index only (BENCHMARKS.md, "Queue gauges", has the
-- plans at a million queued jobs):
-- - depth: an index-only scan of jobs_queued_tenant_priority (V2), the
--   partial index over queued jobs only (about 8 MB at a million): 70-125 ms
--   per million queued jobs once vacuumed, 13 ms at 100,000; until
--   autovacuum catches up with heavy churn, pages whose visibility bit a
--   claim cleared cost a heap visit (up to ~0.85 s per million). Counting is
--   a scan whatever the index, and nothing exact is cheaper, so the gauges
--   leader runs it at an interval that grows with its cost.
-- - processing: jobs_lease, as large as the busy worker slots.
-- - oldest: a loose index scan: for each priority 1..10 the first entry of
--   jobs_claim (priority DESC, run_at, id) is that priority's oldest ready
--   job, so ten index probes answer it: microseconds at any backlog.
SELECT
    (SELECT coalesce(jsonb_object_agg(priority, n), '{}'::jsonb)
     FROM (SELECT priority, count(*) AS n
           FROM jobs
           WHERE state = 'queued'
           GROUP BY priority) AS p) AS depth,
    (SELECT count(*) FROM jobs WHERE state = 'processing') AS processing,
    (SELECT coalesce(extract(epoch FROM now() - min(o.run_at)), 0)::float8
     FROM generate_series(1, 10) AS p (priority)
     CROSS JOIN LATERAL (
         SELECT run_at
         FROM jobs
         WHERE state = 'queued' AND NOT blocked AND priority = p.priority::smallint
         ORDER BY run_at, id
         LIMIT 1) AS o
     WHERE o.run_at <= now()) AS oldest_queued_age_seconds,
    '[]'::jsonb AS tenant_waits
