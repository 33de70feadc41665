-- migration_applied: whether migration $1 (version) is recorded as applied.
SELECT EXISTS (SELECT 1 FROM refinery_schema_history WHERE version = $1)
