-- record_migration: marks migration $1 (version), $2 (name), $3 (checksum,
-- decimal) applied, for a migration the runner applied itself outside a
-- transaction. The same row refinery writes (applied_on in RFC 3339), so
-- refinery's own runs see it applied and its checksum verified.
INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
VALUES ($1, $2, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), $3)
