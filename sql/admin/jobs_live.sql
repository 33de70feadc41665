-- jobs_live: one page of live jobs (queued, processing) for the operator
-- console, newest first by id (UUIDv7: submission order), scanning at most
-- $10 jobs. Parameters $1..$10 and the result as jobs_history.sql ($1 NULL:
-- both states; $8 matches the last error). The inner scan walks the primary
-- key backwards, or the index of the processing jobs (jobs_lease) or of a
-- conversation when the planner finds it cheaper.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
       max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, run_at, hit, scanned
FROM (
    SELECT s.*,
           row_number() OVER (ORDER BY s.id DESC) AS scanned,
           coalesce(($2::uuid IS NULL OR s.tenant_id = $2)
             AND ($3::smallint IS NULL OR s.priority = $3)
             AND ($4::text IS NULL OR s.kind = $4)
             AND ($8::text IS NULL OR s.error ILIKE $8), false) AS hit
    FROM (
        SELECT id, tenant_id, conversation_id, kind, priority, state, payload,
               attempt AS attempts, max_attempts, NULL::jsonb AS result, last_error AS error,
               lease_owner AS worker, NULL::integer AS input_tokens,
               NULL::integer AS output_tokens, created_at, started_at,
               NULL::timestamptz AS finished_at, run_at
        FROM jobs
        WHERE ($1::job_state IS NULL OR state = $1)
          AND ($5::uuid IS NULL OR conversation_id = $5)
          AND ($6::uuid IS NULL OR id >= $6)
          AND ($7::uuid IS NULL OR id < $7)
        ORDER BY id DESC
        LIMIT $10
    ) s
) scan
WHERE hit OR scanned = $10
LIMIT $9 + 1
