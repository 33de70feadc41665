-- begin_generic_plans: starts a transaction whose statements use their
-- generic plans, in one round trip. Postgres would otherwise plan afresh, at
-- almost every execution, the statements that take an array of ids (a custom
-- plan looks cheaper for an array whose length only it knows), and that
-- planning costs more than running them (BENCHMARKS.md). Used for the
-- transaction that writes a batch of outcomes (finish.sql, unblock.sql and
-- the handlers' writes, such as the chat turn's append_turns.sql) and for the
-- history loader's reads (histories.sql). tests/sql_files.rs checks those
-- generic plans on a fresh database; the plans on `jobs` follow the table
-- through the worker's maintenance, which analyzes it once it outgrows its
-- statistics.
BEGIN;
SET LOCAL plan_cache_mode = force_generic_plan
