-- age: raises the effective priority of queues that have waited for a
-- turn: one level per `fair_settings.aging_seconds` since the queue's last
-- turn (or since it filled), up to 10. A raised queue joins its new level
-- one job ahead of the least served queue there, so it is next. Its next
-- turn puts it back at its own priority (the triggers in
-- migrations/V10__fair_scheduling.sql). Returns the queues raised.
--
-- Run by every worker's maintenance pass. Rows another statement is
-- changing are skipped (the next pass gets them), taken in key order like
-- the triggers take them, so this never waits on, or deadlocks with, a
-- claim or an enqueue.
WITH due AS (
    SELECT f.tenant_key, f.priority,
           least(10, f.priority + floor(extract(epoch FROM now() - f.waiting_since)
                                        / s.aging_seconds))::smallint AS eff
    FROM fair_queues f
    CROSS JOIN fair_settings s
    WHERE f.active
),
locked AS (
    SELECT f.tenant_key, f.priority, d.eff
    FROM fair_queues f
    JOIN due d USING (tenant_key, priority)
    WHERE d.eff > f.eff_priority
    ORDER BY f.tenant_key, f.priority
    FOR NO KEY UPDATE OF f SKIP LOCKED
)
UPDATE fair_queues f
SET eff_priority = l.eff,
    vtime = fair_join_vtime(l.eff, f.vtime)
FROM locked l
WHERE f.tenant_key = l.tenant_key AND f.priority = l.priority
RETURNING f.tenant_key, f.priority, f.eff_priority
