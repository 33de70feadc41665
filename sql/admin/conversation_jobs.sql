-- conversation_jobs: the jobs of conversation $1, live and finished, in
-- submission order (at most $2). Each table by its conversation index.
SELECT * FROM (
    SELECT id, tenant_id, conversation_id, kind, priority, state, payload,
           attempt AS attempts, max_attempts, NULL::jsonb AS result, last_error AS error,
           lease_owner AS worker, NULL::integer AS input_tokens,
           NULL::integer AS output_tokens, created_at, started_at,
           NULL::timestamptz AS finished_at, run_at
    FROM jobs
    WHERE conversation_id = $1
    UNION ALL
    SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
           max_attempts, result, error, worker, input_tokens, output_tokens,
           created_at, started_at, finished_at, NULL::timestamptz AS run_at
    FROM job_history
    WHERE conversation_id = $1
) AS j
ORDER BY id
LIMIT $2
