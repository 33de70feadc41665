-- create_key: stores a new API key of tenant $2. $1 key id, $3 the SHA-256
-- of the key (the key itself is never stored), $4 its first characters,
-- shown to operators to tell keys apart.
INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix)
VALUES ($1, $2, $3, $4)
