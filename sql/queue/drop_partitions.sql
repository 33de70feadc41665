-- drop_partitions: drops job_history partitions that end before $1
-- (timestamptz); returns how many it dropped.
SELECT skipjack_drop_history_partitions($1)
