-- stats: the live queue at a glance: queued jobs by priority (ready, delayed
-- or blocked behind their conversation), jobs being processed, the age in
-- seconds of the oldest job that is ready to run (0 when none is), and the
-- ten tenants whose oldest ready job has waited longest, as [name, seconds]
-- pairs ('' for jobs without a tenant; for the operators' gauges only,
-- never shown to a tenant).
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
-- - oldest: a loose index scan: for each queue with jobs (`fair_queues`,
--   one per tenant and priority) the first entry of jobs_fair_claim is
--   that queue's oldest ready job, so one index probe per queue answers
--   it: microseconds at any backlog.
SELECT
    (SELECT coalesce(jsonb_object_agg(priority, n), '{}'::jsonb)
     FROM (SELECT priority, count(*) AS n
           FROM jobs
           WHERE state = 'queued'
           GROUP BY priority) AS p) AS depth,
    (SELECT count(*) FROM jobs WHERE state = 'processing') AS processing,
    (SELECT coalesce(extract(epoch FROM now() - min(o.run_at)), 0)::float8
     FROM fair_queues f
     CROSS JOIN LATERAL (
         SELECT run_at
         FROM jobs
         WHERE coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) = f.tenant_key
           AND priority = f.priority AND state = 'queued' AND NOT blocked
         ORDER BY run_at, id
         LIMIT 1) AS o
     WHERE f.active AND o.run_at <= now()) AS oldest_queued_age_seconds,
    (SELECT coalesce(jsonb_agg(jsonb_build_array(w.name, w.age) ORDER BY w.age DESC), '[]'::jsonb)
     FROM (SELECT coalesce(t.name, '') AS name,
                  extract(epoch FROM now() - min(o.run_at))::float8 AS age
           FROM fair_queues f
           CROSS JOIN LATERAL (
               SELECT run_at
               FROM jobs
               WHERE coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) = f.tenant_key
                 AND priority = f.priority AND state = 'queued' AND NOT blocked
               ORDER BY run_at, id
               LIMIT 1) AS o
           LEFT JOIN tenants t ON t.id = f.tenant_key
           WHERE f.active AND o.run_at <= now()
           GROUP BY 1
           ORDER BY 2 DESC
           LIMIT 10) AS w) AS tenant_waits
