-- schema_compat: what the migrations newer than $1 (a process's schema
-- version) declare: the oldest schema version each keeps working
-- (migrations/V5__schema_compat.sql).
SELECT version, oldest_compatible FROM schema_compat WHERE version > $1
