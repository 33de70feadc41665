-- skipjack:no-transaction
--
-- skipjack schema, version 11: provider budgets shared by every worker
-- process, and the 'snoozed' job event.
--
-- `provider_budgets`: one row per (upstream endpoint, model) holding the
-- GCRA state of its requests-per-minute and tokens-per-minute limits
-- (docs/provider-limits.md). Every reservation is one UPDATE of one row
-- (sql/llm/reserve.sql), so the limits hold across all worker processes
-- without any process-local state. `endpoint` is a label without
-- credentials (the base URL without user-info or query, and the
-- endpoint's position in the pool), never a key.
--
-- A logged table on purpose: after a crash an UNLOGGED table comes back
-- empty, every budget full, and the minute around the crash could see up
-- to twice the limit. The rows are few (one per endpoint and model) and
-- their updates HOT (no indexed column changes; fillfactor leaves room).
--
-- `job_events.event` may now be 'snoozed': a job that found no budget went
-- back to the queue without using an attempt. Builds at schema 5..10 never
-- write it and read events as text: compatible with 5.
--
-- Run statement by statement (the header above): the new CHECK is added
-- NOT VALID (a brief lock, no scan) and validated separately (a scan that
-- lets writers go on); the old CHECK is dropped last. Every statement can
-- run again after a failure part way.

SET lock_timeout = '2s';
SET statement_timeout = '10s';

CREATE TABLE IF NOT EXISTS provider_budgets (
    endpoint        text NOT NULL CHECK (length(endpoint) BETWEEN 1 AND 500),
    model           text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    -- Theoretical arrival time of the next request / token (GCRA): the
    -- budget is used up to here.
    requests_tat    timestamptz NOT NULL DEFAULT now(),
    tokens_tat      timestamptz NOT NULL DEFAULT now(),
    -- Every token ever reserved or charged here: a reservation remembers
    -- the count after it, so that a later give-back knows how much was
    -- reserved after it (see sql/llm/correct.sql).
    tokens_reserved bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, model)
) WITH (fillfactor = 50);

-- Only a constraint left by an interrupted run of this migration, which is
-- then added again.
-- squawk-ignore ban-drop-constraint
ALTER TABLE job_events DROP CONSTRAINT IF EXISTS job_events_event_v11;
ALTER TABLE job_events ADD CONSTRAINT job_events_event_v11
    CHECK (event IN ('retried', 'rescued', 'cancelled', 'released', 'snoozed')) NOT VALID;
SET lock_timeout = 0;
SET statement_timeout = 0;
ALTER TABLE job_events VALIDATE CONSTRAINT job_events_event_v11;
SET lock_timeout = '2s';
SET statement_timeout = '10s';
-- The validated constraint above allows every value this one allows, and
-- 'snoozed': no guarantee is lost.
-- squawk-ignore ban-drop-constraint
ALTER TABLE job_events DROP CONSTRAINT IF EXISTS job_events_event_check;

-- Additive: builds at schema 5 keep working.
INSERT INTO schema_compat (version, oldest_compatible) VALUES (11, 5) ON CONFLICT (version) DO NOTHING;
