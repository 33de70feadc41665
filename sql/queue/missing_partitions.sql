-- missing_partitions: the days from $1 to $2 (dates, UTC) that have no
-- job_history partition yet, oldest first. Each is then created in a
-- transaction of its own (create_partition.sql).
SELECT d::date AS day
FROM generate_series($1::date, $2::date, interval '1 day') AS d
WHERE to_regclass(format('job_history_p%s', to_char(d, 'YYYYMMDD'))) IS NULL
ORDER BY d
