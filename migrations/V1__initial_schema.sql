-- skipjack schema, version 1.
--
-- The live queue (`jobs`) holds only queued and processing jobs, so its claim
-- index stays tiny however long the history grows. Finished jobs move to the
-- append-only, day-partitioned `job_history` in the same statement that
-- deletes them from `jobs`. Exceptional transitions (retry, rescue, cancel,
-- release) are recorded in `job_events`. See docs/job-lifecycle.md.

CREATE TYPE job_state AS ENUM ('queued', 'processing', 'completed', 'failed', 'cancelled');

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    -- Per-tenant cap on queued jobs; NULL means the process-wide default.
    max_queued  integer CHECK (max_queued > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- SHA-256 of the full key: keys are random 256-bit secrets, so a fast
    -- hash is enough and the plain key is never stored.
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The first characters of the key, shown to operators to tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    -- The user's default conversation, used when a request names none.
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX conversations_one_default ON conversations (tenant_id, user_id) WHERE is_default;
CREATE INDEX conversations_tenant_user ON conversations (tenant_id, user_id);

CREATE TABLE messages (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             integer NOT NULL CHECK (seq >= 1),
    role            text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         text NOT NULL,
    -- The job whose completion appended this message.
    job_id          uuid,
    tokens          integer CHECK (tokens >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
);

-- The live queue. Only the queue module writes it.
CREATE TABLE jobs (
    id                uuid PRIMARY KEY,          -- UUIDv7: time-ordered, index-local
    tenant_id         uuid REFERENCES tenants (id),
    -- Jobs sharing a conversation run one at a time, in `conversation_seq` order.
    conversation_id   uuid,
    conversation_seq  bigint,
    kind              text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    priority          smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 10),
    state             job_state NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'processing')),
    -- True while an earlier job of the same conversation is live. Blocked jobs
    -- stay out of the claim index; finishing the predecessor unblocks the next.
    blocked           boolean NOT NULL DEFAULT false,
    payload           jsonb NOT NULL DEFAULT '{}',
    idempotency_key   text CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
    run_at            timestamptz NOT NULL DEFAULT now(),
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,               -- first claim
    last_error        text,
    CHECK ((state = 'processing') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK (NOT (blocked AND state = 'processing')),
    CHECK ((conversation_id IS NULL) = (conversation_seq IS NULL))
) WITH (
    -- Every job is inserted, updated two or three times and deleted within
    -- seconds: leave room for HOT updates and vacuum early and often.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim walks this index in order: ready, unblocked jobs only.
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE state = 'queued' AND NOT blocked;
-- The rescuer's scan for expired leases.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'processing';
-- Finding the next blocked job of a conversation.
CREATE INDEX jobs_conversation ON jobs (conversation_id, conversation_seq) WHERE conversation_id IS NOT NULL;
-- Queued jobs per tenant (backpressure). Partial, so claims and finishes,
-- which move jobs out of 'queued', never have to maintain it.
CREATE INDEX jobs_tenant_queued ON jobs (tenant_id) WHERE state = 'queued';

-- Per-conversation ordering state. An upsert on this row serialises the
-- enqueues and finishes of one conversation, so `live_jobs` decides exactly
-- one unblocked job per conversation without table locks.
CREATE TABLE conversation_queues (
    conversation_id uuid PRIMARY KEY,
    last_seq        bigint NOT NULL CHECK (last_seq >= 0),
    live_jobs       integer NOT NULL CHECK (live_jobs >= 0)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02);

-- Idempotency keys of live and finished jobs, kept for the retention window.
-- A table of its own because a unique index on the partitioned history would
-- have to include the partition key.
CREATE TABLE idempotency_keys (
    -- The nil UUID stands for jobs that belong to no tenant.
    tenant_id   uuid NOT NULL,
    key         text NOT NULL,
    job_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Finished jobs, append-only, one partition per UTC day of `finished_at`.
CREATE TABLE job_history (
    id                uuid NOT NULL,
    tenant_id         uuid,
    conversation_id   uuid,
    kind              text NOT NULL,
    priority          smallint NOT NULL,
    state             job_state NOT NULL CHECK (state IN ('completed', 'failed', 'cancelled')),
    payload           jsonb NOT NULL,
    idempotency_key   text,
    attempts          integer NOT NULL,
    max_attempts      integer NOT NULL,
    result            jsonb,
    error             text,
    -- The lease owner of the last attempt.
    worker            text,
    input_tokens      integer,
    output_tokens     integer,
    created_at        timestamptz NOT NULL,     -- submitted
    started_at        timestamptz,              -- first claimed
    finished_at       timestamptz NOT NULL
) PARTITION BY RANGE (finished_at);

CREATE INDEX job_history_id ON job_history (id);
CREATE INDEX job_history_tenant ON job_history (tenant_id, finished_at);
CREATE INDEX job_history_conversation ON job_history (conversation_id, finished_at);

-- Catches rows outside every day partition, so a late maintenance run never
-- makes a completion fail. skipjack_ensure_history_partitions moves such rows
-- into their day partition when it creates it.
CREATE TABLE job_history_default PARTITION OF job_history DEFAULT;

-- Exceptional transitions. The happy path writes none.
CREATE TABLE job_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid NOT NULL,
    tenant_id    uuid,
    event        text NOT NULL CHECK (event IN ('retried', 'rescued', 'cancelled', 'released')),
    attempt      integer NOT NULL,
    error        text,
    next_run_at  timestamptz,
    worker       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id);
CREATE INDEX job_events_created ON job_events (created_at);

-- Processes waiting on a notification channel: workers with free slots that
-- found nothing to claim ('skipjack_jobs'), API processes with long-polls in
-- flight ('skipjack_done'). A statement sends a NOTIFY only while its channel
-- has a waiter: a NOTIFY serialises commits, so it is skipped whenever nobody
-- would act on it. Unlogged: after a crash, waiters register again.
CREATE UNLOGGED TABLE queue_waiters (
    channel  text NOT NULL,
    waiter   text NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, waiter)
);

-- One job whether live or finished: what auditors and the API read.
CREATE VIEW all_jobs AS
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, idempotency_key,
       attempt AS attempts, max_attempts, NULL::jsonb AS result, last_error AS error,
       lease_owner AS worker, NULL::integer AS input_tokens, NULL::integer AS output_tokens,
       created_at, started_at, NULL::timestamptz AS finished_at, run_at
FROM jobs
UNION ALL
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, idempotency_key,
       attempts, max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, NULL::timestamptz AS run_at
FROM job_history;

-- Creates the day partitions of job_history from `first_day` to `last_day`
-- (UTC), moving any rows the default partition holds for those days. Safe to
-- call from every process at once: an advisory lock serialises callers.
CREATE FUNCTION skipjack_ensure_history_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    lo      timestamptz;
    hi      timestamptz;
    part    text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('skipjack.job_history.partitions'));
    d := first_day;
    WHILE d <= last_day LOOP
        part := format('job_history_p%s', to_char(d, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            lo := d::timestamp AT TIME ZONE 'UTC';
            hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
            EXECUTE format('CREATE TABLE %I (LIKE job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM job_history_default WHERE finished_at >= %L AND finished_at < %L RETURNING *)
                 INSERT INTO %I SELECT * FROM moved', lo, hi, part);
            EXECUTE format('ALTER TABLE job_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drops every day partition of job_history that ends before `cutoff`, and
-- deletes the default partition's rows older than it. Returns the number of
-- partitions dropped.
CREATE FUNCTION skipjack_drop_history_partitions(cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('skipjack.job_history.partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'job_history'::regclass AND c.relname ~ '^job_history_p[0-9]{8}$'
    LOOP
        IF (to_date(substr(part.relname, 14), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM job_history_default WHERE finished_at < cutoff;
    RETURN dropped;
END
$$;

SELECT skipjack_ensure_history_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
