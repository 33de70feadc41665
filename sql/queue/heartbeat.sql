-- heartbeat: extends, in one statement, the leases of all the jobs worker $1
-- is running ($3 ids uuid[]) to now + $2 seconds, and returns the ids it no
-- longer holds: those were rescued from this worker (or already finished),
-- and the worker should stop working on them; their completion would be
-- fenced off anyway. Rows locked by a concurrent finish or rescue are
-- skipped rather than waited for, so a heartbeat never deadlocks with them.
WITH mine AS (
    SELECT id
    FROM jobs
    WHERE id = ANY($3) AND lease_owner = $1 AND state = 'processing'
    FOR NO KEY UPDATE SKIP LOCKED
),
extended AS (
    UPDATE jobs j
    SET lease_expires_at = now() + make_interval(secs => $2)
    FROM mine
    WHERE j.id = mine.id
    RETURNING j.id
)
SELECT held.id
FROM unnest($3::uuid[]) AS held (id)
WHERE NOT EXISTS (SELECT 1 FROM jobs j
                  WHERE j.id = held.id AND j.lease_owner = $1 AND j.state = 'processing')
