-- skipjack schema, version 10: fair scheduling between tenants, a cap on
-- each tenant's running jobs, and aging. docs/scheduling.md explains the
-- rules; this file keeps the bookkeeping they need.
--
-- Claims no longer walk one index of all ready jobs in priority order (the
-- dropped jobs_claim): they walk the active rows of `fair_queues`, one
-- small row per (tenant, priority), in turn order, and take each queue's
-- jobs from the new index jobs_fair_claim. Statement-level triggers on
-- `jobs` keep the bookkeeping on every path that moves a job (enqueue,
-- claim, finish, retry, snooze, rescue, release, cancel, and any future
-- one), in the transaction that moves it:
--
-- - `tenants.running`, exact: claims and finishes write it once per tenant
--   and statement.
-- - A queue's turn (vtime, waiting_since, eff_priority), when a claim
--   serves it: once per queue and claim.
-- - `fair_queues.active`, set when a job enters an inactive queue. An
--   enqueue into an active queue writes nothing here: only reads it, so
--   enqueues of one tenant never wait for each other on its row.
--   Maintenance clears it on queues with no queued job and sets it again on
--   any inactive queue that has one (sql/queue/sweep_queues.sql).
--
-- Applied in one transaction under a SHARE ROW EXCLUSIVE lock on `jobs`:
-- writes to `jobs` wait while the index is built and the counts are taken
-- (about a second per million queued jobs, like V2), so the counts start
-- exact. Every statement can run again (a run interrupted before refinery
-- recorded it is repeated whole): the counts are taken afresh.

-- A lock on `jobs` for the whole migration: the counts below must see
-- every change made before the triggers exist and none after. A lock
-- request queued behind a long transaction would hold up every writer
-- behind it: give up after 5 s instead (the migration can run again).
-- Building the index takes about a second per million queued jobs: a
-- minute is far more than any queue needs.
SET lock_timeout = '5s';
SET statement_timeout = '60s';
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

-- Tenants: their share and their cap. The table holds one row per
-- customer: rewriting nothing, checking a few rows.
-- A weight is 1 to 100: smallint like jobs.priority.
-- squawk-ignore adding-field-with-default, adding-not-nullable-field, prefer-bigint-over-smallint
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS weight smallint NOT NULL DEFAULT 1;
-- Only a constraint left by an interrupted run of this migration, which is
-- then added again.
-- squawk-ignore ban-drop-constraint
ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_weight_range;
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE tenants ADD CONSTRAINT tenants_weight_range CHECK (weight BETWEEN 1 AND 100);
-- squawk-ignore prefer-bigint-over-int
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS max_running integer;
-- squawk-ignore ban-drop-constraint
ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_max_running_positive;
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE tenants ADD CONSTRAINT tenants_max_running_positive CHECK (max_running > 0);
-- Jobs of the tenant in state 'processing', kept by the triggers below.
-- squawk-ignore adding-field-with-default, adding-not-nullable-field, prefer-bigint-over-int
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS running integer NOT NULL DEFAULT 0;

-- The scheduler's settings, one row, shared by every process.
CREATE TABLE IF NOT EXISTS fair_settings (
    id                  boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- A queue's effective priority rises by one level per this many seconds
    -- without a turn (aging).
    aging_seconds       double precision NOT NULL DEFAULT 10 CHECK (aging_seconds > 0),
    -- Cap on running jobs for tenants without their own; NULL: no cap.
    -- squawk-ignore prefer-bigint-over-int
    default_max_running integer CHECK (default_max_running > 0)
);
INSERT INTO fair_settings DEFAULT VALUES ON CONFLICT (id) DO NOTHING;

-- One queue per (tenant, priority). The nil UUID stands for jobs without a
-- tenant. Rows stay when a queue empties, inactive; there are at most ten
-- per tenant.
CREATE TABLE IF NOT EXISTS fair_queues (
    tenant_key    uuid NOT NULL,
    -- Priorities are 1 to 10: smallint like jobs.priority.
    -- squawk-ignore prefer-bigint-over-smallint
    priority      smallint NOT NULL,
    -- The queue may hold queued jobs: claims visit it. Set whenever a job
    -- enters the queue while it is clear; cleared by maintenance only.
    active        boolean NOT NULL,
    -- The priority the queue is served at: its own, raised by aging.
    -- squawk-ignore prefer-bigint-over-smallint
    eff_priority  smallint NOT NULL,
    -- Virtual time: the service the queue has had, in jobs divided by the
    -- tenant's weight. Within one effective priority the queue with the
    -- least is served first.
    vtime         double precision NOT NULL,
    -- Since when the queue has waited: its last turn, or when it filled.
    waiting_since timestamptz NOT NULL,
    PRIMARY KEY (tenant_key, priority)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 100);

-- Claims walk this index: highest effective priority first, least served
-- first within it.
-- The table was created empty by this same transaction: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS fair_queues_turn ON fair_queues (eff_priority DESC, vtime) WHERE active;

-- One queue's ready jobs in order. Replaces jobs_claim, so an enqueue still
-- writes one claim index entry.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS jobs_fair_claim ON jobs (
    (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)), priority, run_at, id)
    WHERE state = 'queued' AND NOT blocked;
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS jobs_claim;

-- The virtual time a queue takes when it fills in effective priority p: one
-- job ahead of the least served queue there (so a newcomer is next), or its
-- own when it is alone.
CREATE OR REPLACE FUNCTION fair_join_vtime(p smallint, own double precision) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT min(vtime) - 1 FROM fair_queues
                     WHERE active AND eff_priority = p), own)
$$;

-- Applies one statement's changes. `changes` holds, per (tenant, priority,
-- state), the rows that entered it (n > 0) or left it (n < 0).
CREATE OR REPLACE FUNCTION fair_apply(changes jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Tenants first, in id order (claims lock them in that order too),
    -- then queues in key order: no two statements can wait on each other's
    -- rows in a circle.
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(changes) c
               WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL) THEN
        PERFORM 1 FROM tenants
        WHERE id IN (SELECT (c->>'t')::uuid FROM jsonb_array_elements(changes) c
                     WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL)
        ORDER BY id
        FOR NO KEY UPDATE;
        UPDATE tenants t
        SET running = t.running + d.n
        FROM (SELECT (c->>'t')::uuid AS id, sum((c->>'n')::integer) AS n
              FROM jsonb_array_elements(changes) c
              WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL
              GROUP BY 1) d
        WHERE t.id = d.id AND d.n <> 0;
    END IF;

    -- Queues that jobs entered: activate the inactive ones (read first, so
    -- that an enqueue into an active queue writes and locks nothing).
    INSERT INTO fair_queues AS f (tenant_key, priority, active, eff_priority, vtime, waiting_since)
    SELECT d.k, d.p, true, d.p, fair_join_vtime(d.p, 0), now()
    FROM (SELECT DISTINCT coalesce((c->>'t')::uuid, '00000000-0000-0000-0000-000000000000'::uuid) AS k,
                 (c->>'p')::smallint AS p
          FROM jsonb_array_elements(changes) c
          WHERE c->>'s' = 'queued' AND (c->>'n')::integer > 0) d
    WHERE NOT EXISTS (SELECT 1 FROM fair_queues a
                      WHERE a.tenant_key = d.k AND a.priority = d.p AND a.active)
    ORDER BY d.k, d.p
    ON CONFLICT (tenant_key, priority) DO UPDATE
    -- Filling up: join the queues of its priority, waiting from now.
    SET active = true,
        eff_priority = f.priority,
        vtime = fair_join_vtime(f.priority, f.vtime),
        waiting_since = now()
    WHERE NOT f.active;

    -- Queues a claim served (jobs went from 'queued' to 'processing': only
    -- claims do that): back to their own priority, charged the jobs they
    -- got, waiting from now. Locked in key order first.
    PERFORM 1 FROM fair_queues f
    WHERE (f.tenant_key, f.priority) IN (
        SELECT coalesce((q->>'t')::uuid, '00000000-0000-0000-0000-000000000000'::uuid),
               (q->>'p')::smallint
        FROM jsonb_array_elements(changes) q
        WHERE q->>'s' = 'queued' AND (q->>'n')::integer < 0)
    ORDER BY f.tenant_key, f.priority
    FOR NO KEY UPDATE;
    UPDATE fair_queues f
    SET eff_priority = f.priority,
        vtime = (CASE WHEN f.eff_priority <> f.priority
                      THEN fair_join_vtime(f.priority, f.vtime) ELSE f.vtime END)
                + d.n::double precision
                  / coalesce((SELECT weight FROM tenants WHERE id = f.tenant_key), 1),
        waiting_since = now()
    FROM (SELECT coalesce((q->>'t')::uuid, '00000000-0000-0000-0000-000000000000'::uuid) AS k,
                 (q->>'p')::smallint AS p, (r->>'n')::integer AS n
          FROM jsonb_array_elements(changes) q
          JOIN jsonb_array_elements(changes) r
            ON r->>'s' = 'processing' AND (r->>'n')::integer > 0
           AND r->'t' = q->'t' AND r->'p' = q->'p'
          WHERE q->>'s' = 'queued' AND (q->>'n')::integer < 0) d
    WHERE f.tenant_key = d.k AND f.priority = d.p;
END
$$;

-- The statement triggers: turn the transition tables into changes.
CREATE OR REPLACE FUNCTION fair_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fair_apply((SELECT coalesce(jsonb_agg(jsonb_build_object(
                'p', priority, 't', tenant_id, 's', state, 'n', n)), '[]')
            FROM (SELECT priority, tenant_id, state, count(*) AS n
                  FROM new_rows GROUP BY 1, 2, 3) g));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION fair_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes jsonb;
BEGIN
    -- Only the running counts change: deleted queued jobs leave their
    -- queue active until maintenance finds it empty.
    SELECT jsonb_agg(jsonb_build_object('p', priority, 't', tenant_id, 's', state, 'n', -n))
    INTO changes
    FROM (SELECT priority, tenant_id, state, count(*) AS n
          FROM old_rows WHERE state = 'processing' AND tenant_id IS NOT NULL
          GROUP BY 1, 2, 3) g;
    IF changes IS NOT NULL THEN
        PERFORM fair_apply(changes);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION fair_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes jsonb;
BEGIN
    -- Rows that moved between states (or tenants, or priorities) leave a
    -- count other than zero; most updates (heartbeats, unblocking) move
    -- none, and stop here.
    SELECT jsonb_agg(jsonb_build_object('p', priority, 't', tenant_id, 's', state, 'n', n))
    INTO changes
    FROM (SELECT priority, tenant_id, state, sum(n) AS n
          FROM (SELECT priority, tenant_id, state, 1 AS n FROM new_rows
                UNION ALL
                SELECT priority, tenant_id, state, -1 FROM old_rows) u
          GROUP BY 1, 2, 3
          HAVING sum(n) <> 0) g;
    IF changes IS NOT NULL THEN
        PERFORM fair_apply(changes);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION fair_jobs_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE fair_queues SET active = false WHERE active;
    UPDATE tenants SET running = 0 WHERE running <> 0;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER fair_jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fair_jobs_inserted();
CREATE OR REPLACE TRIGGER fair_jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fair_jobs_updated();
CREATE OR REPLACE TRIGGER fair_jobs_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fair_jobs_deleted();
CREATE OR REPLACE TRIGGER fair_jobs_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION fair_jobs_truncated();

-- The queues and counts of the jobs already there.
UPDATE fair_queues SET active = false WHERE active;
INSERT INTO fair_queues (tenant_key, priority, active, eff_priority, vtime, waiting_since)
SELECT DISTINCT coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), priority,
       true, priority, 0::double precision, now()
FROM jobs
WHERE state = 'queued'
ON CONFLICT (tenant_key, priority) DO UPDATE SET active = true;
UPDATE tenants t
SET running = coalesce((SELECT count(*) FROM jobs
                        WHERE state = 'processing' AND tenant_id = t.id), 0);

INSERT INTO schema_compat (version, oldest_compatible) VALUES (10, 5) ON CONFLICT (version) DO NOTHING;

RESET lock_timeout;
RESET statement_timeout;
