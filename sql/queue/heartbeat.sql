-- heartbeat: extends, in one statement, the leases of all the attempts
-- worker $1 is running ($3 job ids uuid[], $4 attempts integer[]) to now +
-- $2 seconds, and returns the (id, attempt) pairs it no longer holds: those
-- were rescued from this worker (maybe claimed again since, by it or another
-- worker, as a newer attempt) or already finished, and the worker should stop
-- working on those attempts, and only those; their completion would be
-- fenced off anyway. Rows locked by a concurrent finish or rescue are
-- skipped rather than waited for, so a heartbeat never deadlocks with them.
WITH held AS (
    SELECT h.id, h.attempt
    FROM unnest($3::uuid[], $4::integer[]) AS h (id, attempt)
),
mine AS (
    SELECT j.id
    FROM jobs j
    JOIN held h ON j.id = h.id AND j.attempt = h.attempt
    WHERE j.lease_owner = $1 AND j.state = 'processing'
    FOR NO KEY UPDATE OF j SKIP LOCKED
),
extended AS (
    UPDATE jobs j
    SET lease_expires_at = now() + make_interval(secs => $2)
    FROM mine
    WHERE j.id = mine.id
    RETURNING j.id
)
SELECT h.id, h.attempt
FROM held h
WHERE NOT EXISTS (SELECT 1 FROM jobs j
                  WHERE j.id = h.id AND j.attempt = h.attempt AND j.lease_owner = $1
                    AND j.state = 'processing')
