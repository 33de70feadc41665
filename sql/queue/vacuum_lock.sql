-- vacuum_lock: takes the session lock that lets one process at a time
-- vacuum the jobs table, if free; returns whether it was taken. A session
-- lock because VACUUM cannot run inside a transaction; the caller takes it
-- on a connection that it closes afterwards, never returning it to the pool
-- (closing the session releases the lock on every path, cancellation too).
SELECT pg_try_advisory_lock(hashtext('skipjack.jobs.vacuum'))
