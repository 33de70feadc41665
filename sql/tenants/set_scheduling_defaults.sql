-- set_scheduling_defaults: the scheduler's shared settings
-- (docs/scheduling.md). $1 aging seconds per priority level (NULL:
-- unchanged), $2 default cap on a tenant's running jobs (NULL: unchanged),
-- $3 true: no default cap. Returns the new settings.
UPDATE fair_settings
SET aging_seconds = coalesce($1, aging_seconds),
    default_max_running = CASE WHEN $3 THEN NULL ELSE coalesce($2, default_max_running) END
RETURNING aging_seconds, default_max_running
