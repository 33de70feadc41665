-- find_keys: the unrevoked keys whose id (as text) or prefix is $1; the
-- caller revokes only when exactly one matches.
SELECT id, tenant_id, key_prefix
FROM api_keys
WHERE revoked_at IS NULL AND (id::text = $1 OR key_prefix = $1)
