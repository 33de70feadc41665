-- skipjack schema, version 2: one index over queued jobs by tenant and
-- priority, for both counts the processes take of the queue.
--
-- Admission control counts queued jobs per tenant a few times a second
-- (sql/tenants/queued_by_tenant.sql); the queue gauges count them per
-- priority every few seconds (sql/queue/stats.sql). With (tenant_id,
-- priority) both are index-only scans of this small partial index (about
-- 7 MB at a million queued jobs) instead of visiting the heap for the
-- priority. It replaces jobs_tenant_queued, which held the same rows, so an
-- enqueue maintains no more index entries than before; like it, it is
-- partial on state = 'queued', so claims and finishes never touch it.
--
-- Building it locks `jobs` against writes for about a second per million
-- queued jobs (measured: BENCHMARKS.md, "Queue gauges").
CREATE INDEX jobs_queued_tenant_priority ON jobs (tenant_id, priority) WHERE state = 'queued';
DROP INDEX jobs_tenant_queued;
