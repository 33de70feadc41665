-- claim: hands up to $2 ready jobs to worker $1, leased for $3 seconds.
--
-- $4 kinds text[]: the job kinds the worker has handlers for.
-- One short statement, committed at once: no transaction or row lock is held
-- while the jobs run. Fair between tenants (docs/scheduling.md):
--
-- - `walk` visits the queues (one per tenant and priority, `fair_queues`)
--   in turn order, highest effective priority first and least served first
--   within it, and takes each queue's ready jobs oldest first from
--   jobs_fair_claim, skipping rows another claimer has locked. The outer
--   LIMIT stops the walk as soon as it has $2 jobs, so a claim reads the
--   head of a few queues whatever the backlog. A tenant at its cap of
--   running jobs is passed over; one below it gives at most its room.
-- - `capped` locks the capped tenants among those in id order, re-reading
--   their running count: a claim that ran at the same time has committed
--   by then, so `room` counts its jobs too.
-- - `chosen` keeps, per capped tenant, no more jobs than its room. The jobs
--   it drops were locked only by this statement and are free again when it
--   commits.
--
-- The statement triggers on `jobs` then count the claimed jobs as running
-- and charge each queue for its jobs (migrations/V10__fair_scheduling.sql).
WITH walk AS MATERIALIZED (
    SELECT j.id, f.tenant_key, f.eff_priority, f.vtime, j.run_at
    FROM fair_queues f
    -- A lookup by primary key per queue visited (a plain join could be
    -- planned as a scan of every tenant).
    LEFT JOIN LATERAL (
        SELECT id, running,
               coalesce(max_running, (SELECT default_max_running FROM fair_settings)) AS cap
        FROM tenants WHERE id = f.tenant_key) t ON true
    CROSS JOIN LATERAL (
        SELECT jobs.id, jobs.run_at
        FROM jobs
        WHERE coalesce(jobs.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) = f.tenant_key
          AND jobs.priority = f.priority
          AND jobs.state = 'queued' AND NOT jobs.blocked
          AND jobs.run_at <= now() AND jobs.kind = ANY($4)
        ORDER BY jobs.run_at, jobs.id
        LIMIT greatest(0, least($2, t.cap - t.running))
        FOR UPDATE OF jobs SKIP LOCKED
    ) j
    WHERE f.active
      AND (t.cap IS NULL OR t.running < t.cap)
    ORDER BY f.eff_priority DESC, f.vtime
    LIMIT $2
),
capped AS (
    SELECT t.id,
           coalesce(t.max_running, (SELECT default_max_running FROM fair_settings)) - t.running
               AS room
    FROM tenants t
    WHERE t.id IN (SELECT tenant_key FROM walk)
      AND coalesce(t.max_running, (SELECT default_max_running FROM fair_settings)) IS NOT NULL
    ORDER BY t.id
    FOR NO KEY UPDATE OF t
),
chosen AS (
    SELECT w.id
    FROM (SELECT walk.*,
                 row_number() OVER (PARTITION BY tenant_key
                                    ORDER BY eff_priority DESC, vtime, run_at, id) AS n
          FROM walk) w
    LEFT JOIN capped c ON c.id = w.tenant_key
    WHERE c.id IS NULL OR w.n <= c.room
)
UPDATE jobs j
SET state = 'processing',
    attempt = j.attempt + 1,
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $3),
    -- The clock, not now(): the statement's start can precede the commit of
    -- the finish that let this job be claimed (or of its enqueue) when the
    -- backend waited or was descheduled in between, and a turn would then
    -- seem to start before the previous one finished.
    started_at = coalesce(j.started_at, clock_timestamp())
-- An array of ids: always primary-key probes (a join to the CTE can be
-- planned as a hash join over a scan of all of `jobs`).
WHERE j.id = ANY (ARRAY(SELECT id FROM chosen))
RETURNING j.id, j.tenant_id, j.conversation_id, j.kind, j.priority, j.payload,
          j.attempt, j.max_attempts, j.created_at, j.started_at, j.lease_expires_at
