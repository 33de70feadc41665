-- create: adds webhook $1 for tenant $2 (url $3, secret $4, events $5)
-- unless the tenant already has $6 webhooks. Run after lock_tenant.sql in
-- the same transaction. Returns the new row's created_at, or no row when
-- the tenant is at its cap.
INSERT INTO webhooks (id, tenant_id, url, secret, events)
SELECT $1, $2, $3, $4, $5::text[]
WHERE (SELECT count(*) FROM webhooks WHERE tenant_id = $2) < $6
RETURNING created_at
