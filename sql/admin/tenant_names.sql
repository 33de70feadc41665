-- tenant_names: every tenant's id and name, for labelling the console's
-- per-tenant numbers. $1 most rows.
SELECT id, name FROM tenants ORDER BY name LIMIT $1
