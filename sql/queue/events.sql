-- events: the exceptional transitions of job $1, oldest first.
SELECT job_id, event, attempt, error, next_run_at, worker, created_at
FROM job_events
WHERE job_id = $1
ORDER BY id
