-- skipjack schema, version 14: `tenants.running` is kept only for tenants
-- with a cap (their own `max_running`, or `fair_settings.default_max_running`).
--
-- Until now every claim and every finish of a tenant's jobs wrote its row,
-- so a tenant's claims and finishes waited on each other, each for the
-- other's commit to reach disk. Only a cap reads the count: an uncapped
-- tenant's finishes now write no shared row at all.
--
-- A count must be exact from the moment a cap applies. Whatever gives a
-- tenant a cap or takes it away (skipjack, an older process during an
-- upgrade, an operator in psql) passes through the triggers below: they
-- take a SHARE ROW EXCLUSIVE lock on `jobs`, which waits for every
-- transaction that has moved a job and holds back new ones until the change
-- commits, and count the tenant's processing jobs afresh. Claims and
-- finishes before it saw no cap and did not count; those after see it and
-- do. While a tenant has no cap its count is 0.
--
-- Builds at schema 5 and later keep working: the functions change, not what
-- they are called with, and the column stays.

SET lock_timeout = '5s';
SET statement_timeout = '60s';
-- The counts are reset below while no job can move.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

-- The cap a tenant's claims obey: its own, else the default; NULL: none.
CREATE OR REPLACE FUNCTION fair_cap(own integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce(own, (SELECT default_max_running FROM fair_settings))
$$;

CREATE OR REPLACE FUNCTION fair_apply(changes jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Capped tenants first, in id order (claims lock them in that order
    -- too), then queues in key order: no two statements can wait on each
    -- other's rows in a circle. A tenant without a cap is neither locked
    -- nor written (no cap changes while this statement runs: see
    -- fair_lock_jobs below).
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(changes) c
               WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL) THEN
        PERFORM 1 FROM tenants
        WHERE id IN (SELECT (c->>'t')::uuid FROM jsonb_array_elements(changes) c
                     WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL)
          AND fair_cap(max_running) IS NOT NULL
        ORDER BY id
        FOR NO KEY UPDATE;
        UPDATE tenants t
        SET running = t.running + d.n
        FROM (SELECT (c->>'t')::uuid AS id, sum((c->>'n')::integer) AS n
              FROM jsonb_array_elements(changes) c
              WHERE c->>'s' = 'processing' AND c->>'t' IS NOT NULL
              GROUP BY 1) d
        WHERE t.id = d.id AND d.n <> 0 AND fair_cap(t.max_running) IS NOT NULL;
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

-- Whatever sets a cap first locks `jobs` against writes: the statement
-- waits for every transaction that has moved a job to end, and jobs stay
-- put until it commits. Taken before the statement locks any row of its
-- own, so no claim or finish can hold `jobs` while waiting for that row.
-- While the lock request waits, writes to `jobs` queue behind it. Behind a
-- transaction that holds `jobs` for long, the change gives up after 1 s
-- (a worker's transactions last milliseconds), so enqueues wait at most
-- that long; it can be run again.
CREATE OR REPLACE FUNCTION fair_lock_jobs() RETURNS trigger
LANGUAGE plpgsql SET lock_timeout = '1s' AS $$
BEGIN
    LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER fair_tenant_cap_lock BEFORE UPDATE OF max_running ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION fair_lock_jobs();
CREATE OR REPLACE TRIGGER fair_default_cap_lock BEFORE UPDATE OF default_max_running ON fair_settings
    FOR EACH STATEMENT EXECUTE FUNCTION fair_lock_jobs();

-- A tenant's own cap changes: counted afresh when a cap begins to apply,
-- 0 when none does any more.
CREATE OR REPLACE FUNCTION fair_tenant_cap_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF fair_cap(NEW.max_running) IS NULL THEN
        NEW.running := 0;
    ELSIF fair_cap(OLD.max_running) IS NULL THEN
        NEW.running := (SELECT count(*) FROM jobs
                        WHERE tenant_id = NEW.id AND state = 'processing');
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER fair_tenant_cap_changed BEFORE UPDATE OF max_running ON tenants
    FOR EACH ROW WHEN (OLD.max_running IS DISTINCT FROM NEW.max_running)
    EXECUTE FUNCTION fair_tenant_cap_changed();

-- The default cap changes: the same for every tenant without its own.
CREATE OR REPLACE FUNCTION fair_default_cap_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.default_max_running IS NULL THEN
        UPDATE tenants SET running = 0 WHERE max_running IS NULL AND running <> 0;
    ELSIF OLD.default_max_running IS NULL THEN
        UPDATE tenants t
        SET running = (SELECT count(*) FROM jobs j
                       WHERE j.tenant_id = t.id AND j.state = 'processing')
        WHERE t.max_running IS NULL;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER fair_default_cap_changed AFTER UPDATE OF default_max_running ON fair_settings
    FOR EACH ROW WHEN (OLD.default_max_running IS DISTINCT FROM NEW.default_max_running)
    EXECUTE FUNCTION fair_default_cap_changed();

-- Tenants without a cap are counted no more.
UPDATE tenants SET running = 0 WHERE fair_cap(max_running) IS NULL AND running <> 0;

INSERT INTO schema_compat (version, oldest_compatible) VALUES (14, 5) ON CONFLICT (version) DO NOTHING;
