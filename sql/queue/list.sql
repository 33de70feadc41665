-- list: jobs for operators, newest first. $1 state (NULL: any), $2 tenant id
-- (NULL: any), $3 only jobs finished (or, while live, created) at or after
-- this time (NULL: any), $4 most rows.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
       max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, run_at
FROM all_jobs
WHERE ($1::job_state IS NULL OR state = $1)
  AND ($2::uuid IS NULL OR tenant_id = $2)
  AND ($3::timestamptz IS NULL OR coalesce(finished_at, created_at) >= $3)
ORDER BY coalesce(finished_at, created_at) DESC, id DESC
LIMIT $4
