-- migrate_lock: held by `skipjack migrate` for its whole run (session-level
-- advisory lock), so two runs started at once apply each migration once.
SELECT pg_advisory_lock(hashtext('skipjack.migrate'))
