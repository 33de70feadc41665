-- wal_diff: bytes of WAL between positions $2 and $1.
SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8
