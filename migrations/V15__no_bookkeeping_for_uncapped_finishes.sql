-- skipjack schema, version 15: finishing the jobs of a tenant without a cap,
-- and enqueueing into a queue that is active already, run no fair-scheduling
-- bookkeeping, and no cap is looked up through a function planned once per
-- row.
--
-- Since V14 only tenants with a cap keep a running count. The trigger on
-- deletes from `jobs` (finishes, cancels) still called fair_apply for every
-- statement that removed a processing job, and fair_apply then found nothing
-- to write for a tenant without a cap: a third of a millisecond of the
-- server's CPU per finish (BENCHMARKS.md). The trigger now hands fair_apply
-- the jobs of capped tenants only, and does not call it when there are none.
-- Whether a cap applies cannot change while the statement runs: a cap change
-- first waits for the statement's lock on `jobs` (V14).
--
-- Likewise the trigger on inserts: an enqueue into an active queue (every
-- enqueue of a busy tenant) made fair_apply look and find nothing to do. The
-- trigger now looks itself, one key probe per job, and calls it only for a
-- queue to activate (or a job inserted other than queued). A queue the sweep
-- deactivates meanwhile is found holding the job by the next sweep, as
-- before: fair_apply read first too.
--
-- fair_apply and the trigger spell the cap out instead of calling
-- fair_cap(): a SQL function with a subquery is not inlined, and Postgres
-- plans its body again at every call, once per tenant row.
--
-- Builds at schema 5 and later keep working: only function bodies change.

SET lock_timeout = '5s';
SET statement_timeout = '60s';

CREATE OR REPLACE FUNCTION fair_apply(changes jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Capped tenants first, in id order (claims lock them in that order
    -- too), then queues in key order: no two statements can wait on each
    -- other's rows in a circle. A tenant without a cap is neither locked
    -- nor written (no cap changes while this statement runs: see
    -- fair_lock_jobs, V14).
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(changes) c
               WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL) THEN
        PERFORM 1 FROM tenants
        WHERE id IN (SELECT (c->>'t')::uuid FROM jsonb_array_elements(changes) c
                     WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL)
          AND (max_running IS NOT NULL
               OR (SELECT default_max_running FROM fair_settings) IS NOT NULL)
        ORDER BY id
        FOR NO KEY UPDATE;
        UPDATE tenants t
        SET running = t.running + d.n
        FROM (SELECT (c->>'t')::uuid AS id, sum((c->>'n')::integer) AS n
              FROM jsonb_array_elements(changes) c
              WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL
              GROUP BY 1) d
        WHERE t.id = d.id AND d.n <> 0
          AND (t.max_running IS NOT NULL
               OR (SELECT default_max_running FROM fair_settings) IS NOT NULL);
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

CREATE OR REPLACE FUNCTION fair_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes jsonb;
BEGIN
    -- Only the running counts change, and only capped tenants keep one:
    -- deleted queued jobs leave their queue active until maintenance finds
    -- it empty.
    SELECT jsonb_agg(jsonb_build_object('p', g.priority, 't', g.tenant_id, 's', g.state, 'n', -g.n))
    INTO changes
    FROM (SELECT priority, tenant_id, state, count(*) AS n
          FROM old_rows WHERE state = 'processing' AND tenant_id IS NOT NULL
          GROUP BY 1, 2, 3) g
    JOIN tenants t ON t.id = g.tenant_id
    WHERE t.max_running IS NOT NULL
       OR (SELECT default_max_running FROM fair_settings) IS NOT NULL;
    IF changes IS NOT NULL THEN
        PERFORM fair_apply(changes);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION fair_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n
               WHERE n.state <> 'queued'
                  OR NOT EXISTS (
                      SELECT 1 FROM fair_queues a
                      WHERE a.tenant_key = coalesce(n.tenant_id,
                                                    '00000000-0000-0000-0000-000000000000'::uuid)
                        AND a.priority = n.priority AND a.active)) THEN
        PERFORM fair_apply((SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'p', priority, 't', tenant_id, 's', state, 'n', n)), '[]')
                FROM (SELECT priority, tenant_id, state, count(*) AS n
                      FROM new_rows GROUP BY 1, 2, 3) g));
    END IF;
    RETURN NULL;
END
$$;

INSERT INTO schema_compat (version, oldest_compatible) VALUES (15, 5) ON CONFLICT (version) DO NOTHING;
