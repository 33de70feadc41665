-- create_partition: creates and attaches job_history's partition for day $1
-- (date, UTC) unless it exists; returns whether it did. Run alone in a
-- transaction under lock_timeout (maintenance_lock_timeout.sql): attaching
-- locks the default partition, which a long reader of job_history holds.
SELECT skipjack_create_history_partition($1::date)
