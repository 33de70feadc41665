-- publish: appends pieces of streamed replies and tells the API replicas
-- which jobs have new ones.
--
-- $1 job ids, $2 attempts, $3 seqs, $4 texts (one element per piece).
-- ON CONFLICT: a flush whose commit was lost in a broken connection is sent
-- again as it was; pieces already stored stay as they are.
--
-- The NOTIFY payloads name the jobs written, 200 ids per payload (NOTIFY
-- takes at most 8000 bytes), all sent by this one statement: a replica
-- then reads only the streams it serves that have something new, not
-- every stream it serves at every write of every worker.
WITH written AS (
    INSERT INTO stream_deltas (job_id, attempt, seq, text)
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[])
    ON CONFLICT (job_id, attempt, seq) DO NOTHING
    RETURNING job_id
),
jobs AS (
    SELECT job_id, (row_number() OVER () - 1) / 200 AS chunk
    FROM (SELECT DISTINCT job_id FROM written) AS distinct_jobs
),
wake AS (
    SELECT pg_notify('skipjack_stream', string_agg(job_id::text, ','))
    FROM jobs
    GROUP BY chunk
)
SELECT (SELECT count(*) FROM written) AS written, (SELECT count(*) FROM wake) AS notified
