-- wal_lsn: the current WAL position, as text.
SELECT pg_current_wal_lsn()::text
