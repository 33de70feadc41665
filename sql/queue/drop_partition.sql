-- drop_partition: drops job_history's partition for day $1 (date, UTC) if it
-- exists; returns whether it did. Run alone in a transaction under
-- lock_timeout (maintenance_lock_timeout.sql): dropping locks job_history
-- itself, which a long reader holds.
SELECT skipjack_drop_history_partition($1::date)
