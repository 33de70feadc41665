-- skipjack schema, version 5: compatibility declarations, so builds of
-- different versions can run against one database during a rolling upgrade
-- (docs/upgrades.md).
--
-- Every migration from this one on inserts its own row here, in the
-- migration itself: its version and the oldest schema version a build may
-- run at and still work with it (`oldest_compatible`). An additive
-- (expand) migration keeps older builds working and says so; a migration
-- that removes or changes what older builds use (contract) sets it to its
-- own version. A process running at schema version B stays ready on a
-- database holding newer migrations only while each of them declares
-- oldest_compatible <= B.
--
-- The declaration lives in the database, not in the migration files,
-- because a running build has no copy of the migrations newer than itself:
-- the database is the only place it can learn about them.
--
-- A new, empty table: no lock on anything a running process uses. Versions
-- are integers like refinery's own history table's (INT4): bigint buys
-- nothing here.
CREATE TABLE IF NOT EXISTS schema_compat (
    -- squawk-ignore prefer-bigint-over-int
    version            integer PRIMARY KEY,
    -- squawk-ignore prefer-bigint-over-int
    oldest_compatible  integer NOT NULL CHECK (oldest_compatible BETWEEN 1 AND version)
);

-- Adding a table breaks nothing older builds use.
INSERT INTO schema_compat (version, oldest_compatible) VALUES (5, 4);
