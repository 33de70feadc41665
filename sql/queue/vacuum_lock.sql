-- vacuum_lock: $1 true takes, false releases the session lock that lets one
-- process at a time vacuum the jobs table; returns whether it is held.
SELECT CASE WHEN $1 THEN pg_try_advisory_lock(hashtext('skipjack.jobs.vacuum'))
            ELSE NOT pg_advisory_unlock(hashtext('skipjack.jobs.vacuum')) END
