-- skipjack schema, version 16: a claim's fair-scheduling bookkeeping runs
-- two statements instead of six.
--
-- The trigger on updates of `jobs` hands every claim's changes to
-- fair_apply, which ran all of its steps whatever the changes held: it
-- looked for capped tenants, then locked and updated tenants (none, for a
-- tenant without a cap), tried to activate queues (none: a claim only takes
-- jobs out of queues), then locked and charged the queues served. Each
-- statement of a PL/pgSQL function costs an executor start of its own: the
-- function was about a fifteenth of the server's CPU per chat turn
-- (BENCHMARKS.md).
--
-- fair_apply now first reads, in one statement, which steps the changes
-- need: whether the running count of a capped tenant changes, whether jobs
-- entered queues, and how many queues a claim served. It runs only those
-- steps, and locks the queues it charges in key order first only when there
-- are several (one row needs no order). A claim from one queue of a tenant
-- without a cap runs that statement and the charge. What each step does is
-- unchanged.
--
-- Builds at schema 5 and later keep working: only a function body changes.

SET lock_timeout = '5s';
SET statement_timeout = '60s';

CREATE OR REPLACE FUNCTION fair_apply(changes jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- A capped tenant's running count changes.
    capped boolean;
    -- Jobs entered queues (which may have to be activated).
    entered boolean;
    -- Queues a claim served (jobs went from 'queued' to 'processing').
    served bigint;
BEGIN
    -- Whether a cap applies cannot change while the statement runs (a cap
    -- change first waits for the statement's lock on `jobs`: V14).
    SELECT coalesce(bool_or(t.id IS NOT NULL), false),
           coalesce(bool_or(c->>'s' = 'queued' AND (c->>'n')::integer > 0), false),
           count(*) FILTER (WHERE c->>'s' = 'queued' AND (c->>'n')::integer < 0)
    INTO capped, entered, served
    FROM jsonb_array_elements(changes) c
    LEFT JOIN tenants t
      ON c->>'s' = 'processing' AND t.id = (c->>'t')::uuid
     AND (t.max_running IS NOT NULL
          OR (SELECT default_max_running FROM fair_settings) IS NOT NULL);

    -- Capped tenants first, in id order (claims lock them in that order
    -- too), then queues in key order: no two statements can wait on each
    -- other's rows in a circle. A tenant without a cap is neither locked
    -- nor written.
    IF capped THEN
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
    IF entered THEN
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
    END IF;

    -- Queues a claim served: back to their own priority, charged the jobs
    -- they got, waiting from now. Several are locked in key order first.
    IF served > 1 THEN
        PERFORM 1 FROM fair_queues f
        WHERE (f.tenant_key, f.priority) IN (
            SELECT coalesce((q->>'t')::uuid, '00000000-0000-0000-0000-000000000000'::uuid),
                   (q->>'p')::smallint
            FROM jsonb_array_elements(changes) q
            WHERE q->>'s' = 'queued' AND (q->>'n')::integer < 0)
        ORDER BY f.tenant_key, f.priority
        FOR NO KEY UPDATE;
    END IF;
    IF served > 0 THEN
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
    END IF;
END
$$;

INSERT INTO schema_compat (version, oldest_compatible) VALUES (16, 5) ON CONFLICT (version) DO NOTHING;
