-- skipjack schema, version 12: a BRIN index on job_history.finished_at, for
-- the operator console's throughput chart (sql/admin/throughput.sql: jobs
-- finished per minute over the last hour).
--
-- Without it that query reads the whole of today's partition every time a
-- console refreshes its overview: no index of job_history leads with
-- finished_at. Rows arrive in finished_at order, so a BRIN index (one
-- summary per 128 pages) finds the last hour's pages at almost no cost to
-- the completions that write the table: it is kilobytes per partition and
-- is maintained only when a page range is summarised.
--
-- Postgres cannot build an index on a partitioned table CONCURRENTLY. A
-- BRIN build is one sequential pass over each partition with no sort
-- (measured in BENCHMARKS.md, "Operator console"), during which
-- completions wait; lock_timeout makes the migration give up rather than
-- queue every writer behind a long reader, and statement_timeout bounds
-- the build itself (minutes only for hundreds of millions of rows).
-- Partitions created later get the index when they are attached.
-- Additive: builds at schema 5 and later keep working (they never name it).

SET lock_timeout = '2s';
SET statement_timeout = '10min';

-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS job_history_finished ON job_history USING brin (finished_at);

INSERT INTO schema_compat (version, oldest_compatible) VALUES (12, 5) ON CONFLICT (version) DO NOTHING;
