-- publish: appends pieces of streamed replies and wakes the API replicas
-- serving streams.
--
-- $1 job ids, $2 attempts, $3 seqs, $4 texts (one element per piece).
-- ON CONFLICT: a flush whose commit was lost in a broken connection is sent
-- again as it was; pieces already stored stay as they are. One NOTIFY per
-- statement that wrote something, without a payload: a replica reads what is new for all the
-- streams it serves in one query.
WITH written AS (
    INSERT INTO stream_deltas (job_id, attempt, seq, text)
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[])
    ON CONFLICT (job_id, attempt, seq) DO NOTHING
    RETURNING 1
)
SELECT count(*) AS written
FROM written
CROSS JOIN (SELECT pg_notify('skipjack_stream', '')) AS wake
