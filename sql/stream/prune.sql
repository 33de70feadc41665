-- prune: drops up to $2 pieces written before $1.
--
-- Every worker prunes; SKIP LOCKED lets them share the work instead of
-- waiting on each other's rows.
DELETE FROM stream_deltas
WHERE ctid IN (
    SELECT ctid FROM stream_deltas
    WHERE created_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
