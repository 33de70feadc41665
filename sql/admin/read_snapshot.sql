-- read_snapshot: the first statement of the console's reads that take more
-- than one statement (the jobs list reads `jobs` and `job_history` apart):
-- one snapshot for all of them, so a job moving from one table to the other
-- meanwhile is seen exactly once.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
