-- lock_job_nowait: locks job $1's row without waiting, after its
-- conversation's row (lock_lane.sql). A job that was queued when cancel
-- looked may have been claimed and be finishing since: its finish holds the
-- job's row and waits for the conversation's, which cancel holds. Waiting
-- here would deadlock, so cancel gives up at once (lock_not_available),
-- rolls back and starts again; a job cancel already locked (a processing
-- one, lock_running.sql) is simply locked again.
SELECT id
FROM jobs
WHERE id = $1
FOR UPDATE NOWAIT
