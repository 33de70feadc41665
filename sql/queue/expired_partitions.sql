-- expired_partitions: the days whose job_history partition ends at or
-- before $1 (timestamptz), oldest first. Each is then dropped in a
-- transaction of its own (drop_partition.sql).
SELECT p.day
FROM (SELECT to_date(substr(c.relname, 14), 'YYYYMMDD') AS day
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = 'job_history'::regclass
        AND c.relname ~ '^job_history_p[0-9]{8}$') AS p
WHERE (p.day + 1)::timestamp AT TIME ZONE 'UTC' <= $1
ORDER BY p.day
