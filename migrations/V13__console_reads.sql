-- skipjack schema, version 13: what the operator console reads.
--
-- `job_history_unsuccessful`: the finished jobs that did not complete
-- (failed, cancelled), newest first. The console's jobs list scans a
-- bounded number of jobs per page (sql/admin/jobs_history.sql); an operator
-- looking for failed jobs would otherwise scan past every completed one.
-- Partial, so completions (nearly every row written) never touch it: only
-- a failure or a cancellation adds an entry.
--
-- Postgres cannot build an index on a partitioned table CONCURRENTLY. The
-- build is one pass over each partition that sorts only the rows it keeps;
-- completions wait meanwhile, as for V12 (measured in BENCHMARKS.md,
-- "Operator console"). lock_timeout makes the migration give up rather
-- than queue every writer behind a long reader; statement_timeout bounds
-- the build. Partitions created later get the index when they are attached.
--
-- `provider_budgets` gains the limits it enforces, written by each worker
-- process at start-up (sql/llm/ensure_budget_limits.sql), so that the
-- console can show how much of each budget is in use: the table otherwise
-- holds only the GCRA state, which means nothing without the limit. Nullable
-- columns without a default: adding them rewrites nothing.
--
-- Additive: builds at schema 5 and later keep working (they never name
-- these).

SET lock_timeout = '2s';
SET statement_timeout = '10min';

-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS job_history_unsuccessful ON job_history (state, id)
    WHERE state <> 'completed';

SET statement_timeout = '10s';

ALTER TABLE provider_budgets
    ADD COLUMN IF NOT EXISTS rpm bigint,
    ADD COLUMN IF NOT EXISTS tpm bigint,
    ADD COLUMN IF NOT EXISTS request_burst bigint,
    ADD COLUMN IF NOT EXISTS token_burst bigint;

INSERT INTO schema_compat (version, oldest_compatible) VALUES (13, 5) ON CONFLICT (version) DO NOTHING;
