-- skipjack schema, version 9: the pieces of streamed replies.
--
-- `stream_deltas`: the text a worker received from the provider for a job's
-- attempt, in order (seq 1, 2, ...), written every few tens of
-- milliseconds in one statement for all the jobs a worker is streaming, and
-- read by any API replica that serves the job's event stream (see
-- docs/streaming.md). The stored reply is still written once, at
-- completion, to job_history and messages: these rows are a transport, not
-- a record. Hence UNLOGGED (no WAL; a server crash empties the table, and
-- the streams of the jobs running then continue from the next piece or end
-- with the final event, which carries the whole reply), and pruned by age
-- (`SKIPJACK_STREAM_RETENTION_SECONDS`).
--
-- A new table: no lock on anything in use. Additive: builds at schema 5
-- and later keep working (they never name it).

SET lock_timeout = '2s';
SET statement_timeout = '10s';

-- attempt and seq are integers like jobs.attempt: an attempt counter and
-- the pieces of one reply stay far below 2^31.
CREATE UNLOGGED TABLE IF NOT EXISTS stream_deltas (
    job_id uuid NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    attempt integer NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    seq integer NOT NULL,
    text text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt, seq)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);

-- Rows arrive in time order: a BRIN index finds the old ones to prune at
-- almost no write cost. The table was created empty by this same
-- transaction: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS stream_deltas_created ON stream_deltas USING brin (created_at);

INSERT INTO schema_compat (version, oldest_compatible) VALUES (9, 5) ON CONFLICT (version) DO NOTHING;
