-- has_live_jobs: whether any job is live (queued, delayed, blocked or
-- processing).
SELECT EXISTS (SELECT 1 FROM jobs)
