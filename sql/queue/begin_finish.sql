-- begin_finish: starts the transaction that writes a batch of outcomes
-- (finish.sql, unblock.sql and the handlers' writes, such as the chat
-- turn's append_turns.sql), in one round trip. Its statements use their
-- generic plans: Postgres would otherwise plan unblock.sql and the append
-- afresh at almost every batch (a custom plan looks cheaper for arrays whose
-- length only it knows), and the planning costs more than the statements
-- (BENCHMARKS.md). tests/sql_files.rs checks those generic plans on a fresh
-- database; the plans on `jobs` follow the table through the worker's
-- maintenance, which analyzes it once it outgrows its statistics.
BEGIN;
SET LOCAL plan_cache_mode = force_generic_plan
