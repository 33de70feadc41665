-- revoke_key: revokes key $1. The row is kept for auditing; authentication
-- ignores revoked keys.
UPDATE api_keys
SET revoked_at = now()
WHERE id = $1 AND revoked_at IS NULL
