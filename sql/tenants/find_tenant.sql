-- find_tenant: a tenant by id or by name ($1, as text).
SELECT id, name, max_queued
FROM tenants
WHERE id::text = $1 OR name = $1
LIMIT 1
