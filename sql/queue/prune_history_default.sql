-- prune_history_default: deletes the rows of job_history's default partition
-- that finished before $1 (timestamptz); the day partitions older than that
-- are dropped whole. Row locks only: no conflict with readers.
DELETE FROM job_history_default WHERE finished_at < $1
