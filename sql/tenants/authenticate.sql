-- authenticate: the tenant an unrevoked key belongs to, by the SHA-256 of
-- the key ($1, unique index on key_hash), with the stored hash for the
-- caller's constant-time comparison and the tenant's queue limit.
SELECT k.key_hash, t.id, t.max_queued
FROM api_keys k
JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL
