-- skipjack schema, version 8: webhooks on job completion (docs/webhooks.md).
--
-- `webhooks`: a tenant's endpoints, each with the signing secret the
-- deliveries are signed with (kept in clear: signing needs it) and the
-- event types it receives.
--
-- Deliveries are jobs of kind 'webhook' in the ordinary queue, one per
-- (finished job, matching webhook). They are enqueued by a statement-level
-- trigger on job_history: every statement that finishes jobs (finish,
-- cancel, rescue, release) inserts into job_history, so the deliveries
-- commit with the finish or not at all, whichever process wrote it, and no
-- finishing statement had to change. A worker that dies right after the
-- commit loses no event: the delivery is already a queued job.
--
-- Cost without webhooks: one trigger call per finishing statement (not per
-- row) that probes the empty `webhooks` table and returns. The transition
-- table holds the statement's history rows in memory for the trigger.
--
-- Statement-level triggers with transition tables are allowed on a
-- partitioned table (rows routed to every partition are visible in the
-- transition table); they are not cloned to partitions, so attaching and
-- dropping day partitions (skipjack_create_history_partition,
-- skipjack_drop_history_partition) neither copies nor loses it. Rows the
-- partition maintenance moves from the default partition into a new one
-- are inserted into the partition itself, which does not fire it: only
-- finishes do.
--
-- Additive: builds at schema 5 and 6 never name the table and their
-- finishes enqueue deliveries through the trigger all the same (a worker
-- without the webhook handler leaves them queued for one that has it).

SET lock_timeout = '2s';
SET statement_timeout = '10s';

CREATE TABLE IF NOT EXISTS webhooks (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url         text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- `whsec_` and 64 hex digits: the HMAC-SHA256 key of the signatures.
    secret      text NOT NULL CHECK (length(secret) BETWEEN 16 AND 200),
    -- The event types delivered; the API stores all three when a request
    -- names none.
    events      text[] NOT NULL CHECK (
                    cardinality(events) BETWEEN 1 AND 3
                    AND events <@ ARRAY['job.completed', 'job.failed', 'job.cancelled']),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The table was created empty by this same transaction: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks (tenant_id);

-- A time-ordered UUID (version 7) like the ids the application makes, so
-- deliveries stay index-local in `jobs` like every other job.
CREATE OR REPLACE FUNCTION skipjack_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Enqueues one 'webhook' job per (finished job, webhook of its tenant whose
-- events include the job's). Deliveries themselves never produce events.
-- Each job carries the event as delivered, fixed at the finish, and the
-- webhook's id; the secret and URL are read at delivery time, so a deleted
-- webhook's pending deliveries are skipped. Priority 1 (the lowest): chat
-- turns of any higher priority go first. Wakes waiting workers as
-- enqueue.sql does: one NOTIFY, only while one waits.
CREATE OR REPLACE FUNCTION skipjack_enqueue_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    -- The common case: no tenant has a webhook. An index probe of an
    -- empty table.
    IF NOT EXISTS (SELECT 1 FROM webhooks) THEN
        RETURN NULL;
    END IF;
    WITH events AS (
        SELECT f.*, w.id AS webhook_id, 'job.' || f.state::text AS type,
               skipjack_uuid_v7() AS delivery_id
        FROM finished f
        JOIN webhooks w ON w.tenant_id = f.tenant_id
        WHERE f.kind <> 'webhook' AND ('job.' || f.state::text) = ANY (w.events)
    ),
    inserted AS (
        INSERT INTO jobs (id, tenant_id, kind, priority, payload, max_attempts)
        SELECT delivery_id, tenant_id, 'webhook', 1,
               jsonb_build_object(
                   'webhook_id', webhook_id,
                   'event', jsonb_build_object(
                       'id', delivery_id,
                       'type', type,
                       'created_at', now(),
                       'data', jsonb_strip_nulls(jsonb_build_object(
                           'job_id', id,
                           'kind', kind,
                           'conversation_id', conversation_id,
                           'status', state,
                           'response', result -> 'response',
                           'error', error,
                           'attempts', attempts,
                           'usage', CASE WHEN input_tokens IS NOT NULL OR output_tokens IS NOT NULL
                                         THEN jsonb_build_object(
                                             'input_tokens', coalesce(input_tokens, 0),
                                             'output_tokens', coalesce(output_tokens, 0)) END,
                           'finished_at', finished_at)))),
               -- The worker's SKIPJACK_WEBHOOK_MAX_ATTEMPTS decides when a
               -- delivery gives up; this is only the schema's ceiling.
               100
        FROM events
        ORDER BY tenant_id, webhook_id, id
        RETURNING 1
    )
    SELECT count(*) INTO queued FROM inserted;
    IF queued > 0 AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs') THEN
        PERFORM pg_notify('skipjack_jobs', queued::text);
    END IF;
    RETURN NULL;
END
$$;

-- Creating a trigger takes SHARE ROW EXCLUSIVE on job_history (and its
-- partitions) for a moment: finishes wait for it, reads do not; the lock
-- timeout makes it give up (and the runner retry) rather than queue every
-- finish behind a long reader.
DROP TRIGGER IF EXISTS job_history_webhooks ON job_history;
CREATE TRIGGER job_history_webhooks
    AFTER INSERT ON job_history
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT
    EXECUTE FUNCTION skipjack_enqueue_webhooks();

-- Additive: builds at schema 5 and 6 keep working.
INSERT INTO schema_compat (version, oldest_compatible) VALUES (8, 5) ON CONFLICT (version) DO NOTHING;

-- The session goes back to the server's defaults.
SET lock_timeout = 0;
SET statement_timeout = 0;
