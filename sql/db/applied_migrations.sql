-- applied_migrations: every migration applied to the database (refinery's
-- history table), oldest first: what the schema check compares with the
-- migrations compiled into the build.
SELECT version, name FROM refinery_schema_history ORDER BY version
