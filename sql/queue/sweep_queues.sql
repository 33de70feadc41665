-- sweep_queues: keeps `fair_queues.active` true for every queue with a
-- queued job and false for the others, so that claims visit only queues
-- that may hold work. Returns how many queues it activated and cleared.
--
-- An enqueue into an active queue does not touch the queue's row (the
-- triggers in migrations/V10__fair_scheduling.sql), so clearing races with
-- one: this statement may not see a job committed while it runs and clear
-- its queue. The next pass (every maintenance interval, 5 s) activates it
-- again; until then that job waits. Rows another statement is changing
-- are skipped, in key order like the triggers take them: this never waits
-- on, or deadlocks with, a claim or an enqueue.
WITH flip AS (
    SELECT f.tenant_key, f.priority, NOT f.active AS activate
    FROM fair_queues f
    -- One probe of jobs_queued_tenant_priority (V2) per queue.
    WHERE f.active <> CASE
        WHEN f.tenant_key = '00000000-0000-0000-0000-000000000000'::uuid THEN EXISTS (
            SELECT 1 FROM jobs j
            WHERE j.state = 'queued' AND j.tenant_id IS NULL AND j.priority = f.priority)
        ELSE EXISTS (
            SELECT 1 FROM jobs j
            WHERE j.state = 'queued' AND j.tenant_id = f.tenant_key AND j.priority = f.priority)
        END
    ORDER BY f.tenant_key, f.priority
    FOR NO KEY UPDATE OF f SKIP LOCKED
),
changed AS (
    UPDATE fair_queues f
    SET active = flip.activate,
        eff_priority = f.priority,
        vtime = CASE WHEN flip.activate THEN fair_join_vtime(f.priority, f.vtime) ELSE f.vtime END,
        waiting_since = CASE WHEN flip.activate THEN now() ELSE f.waiting_since END
    FROM flip
    WHERE f.tenant_key = flip.tenant_key AND f.priority = flip.priority
    RETURNING flip.activate
)
SELECT count(*) FILTER (WHERE activate) AS activated,
       count(*) FILTER (WHERE NOT activate) AS cleared
FROM changed
