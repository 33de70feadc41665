-- set_scheduling: tenant $1's share and cap (docs/scheduling.md). $2 weight
-- (NULL: unchanged), $3 max running jobs (NULL: unchanged), $4 true: no cap
-- of its own (the default applies). Returns the tenant's new settings and
-- its jobs processing now, counted: `tenants.running` is kept only while a
-- cap applies. The statement locks `jobs` against writes until it commits
-- (migrations/V14__running_counts_for_capped_tenants.sql), so the count is
-- exact.
UPDATE tenants
SET weight = coalesce($2, weight),
    max_running = CASE WHEN $4 THEN NULL ELSE coalesce($3, max_running) END
WHERE id = $1
RETURNING weight, max_running,
          (SELECT count(*) FROM jobs WHERE tenant_id = $1 AND state = 'processing')::integer
              AS running
