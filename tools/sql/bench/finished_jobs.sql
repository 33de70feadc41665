-- finished_jobs: how many jobs job_history holds (`skipjack-bench queue`
-- checks that the drain finished every job it enqueued).
SELECT count(*) FROM job_history
