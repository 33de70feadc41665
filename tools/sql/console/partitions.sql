-- partitions: the day partitions of job_history for
-- `skipjack-bench console`'s history: the last $1 days and tomorrow.
SELECT skipjack_ensure_history_partitions(current_date - $1::int - 1, current_date + 1)
