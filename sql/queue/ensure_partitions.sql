-- ensure_partitions: creates job_history's day partitions from $1 to $2
-- (dates, UTC) that do not exist yet; returns how many it created.
SELECT skipjack_ensure_history_partitions($1::date, $2::date)
