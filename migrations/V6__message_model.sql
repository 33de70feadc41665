-- skipjack:no-transaction
--
-- skipjack schema, version 6: the model that wrote each assistant message,
-- and an index on the job that appended each message.
--
-- `messages.model`: the model the LLM provider reported for an assistant
-- reply (NULL for user messages and for replies written before this
-- version). Builds at schema 6 write it and return it with a
-- conversation's messages; builds at schema 5 never name the column, so
-- they keep working: compatible with 5.
--
-- `messages_job`: finds the turn a job appended (support and audit:
-- `SELECT ... FROM messages WHERE job_id = $1`), which otherwise scans
-- every message of every conversation.
--
-- Safe on a busy database: run outside a transaction, statement by
-- statement (the `skipjack:no-transaction` header above; see db::migrate),
-- so the index is built CONCURRENTLY, without blocking writes to messages.
-- Adding a nullable column without a default only touches the catalog, but
-- it needs a brief ACCESS EXCLUSIVE lock: lock_timeout makes it give up
-- (and the runner retry) rather than queue every writer behind a long
-- transaction. Every statement can run again after a failure part way.

SET lock_timeout = '2s';
SET statement_timeout = '10s';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS model text;

-- A concurrent build waits for transactions older than itself (a lock wait
-- too), and may take a while on a large table: no timeout for it. An
-- interrupted build leaves an invalid index behind; dropping it first makes
-- the retry rebuild it.
SET lock_timeout = 0;
SET statement_timeout = 0;
DROP INDEX CONCURRENTLY IF EXISTS messages_job;
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_job ON messages (job_id);

-- Additive: builds at schema 5 keep working.
INSERT INTO schema_compat (version, oldest_compatible) VALUES (6, 5) ON CONFLICT (version) DO NOTHING;
