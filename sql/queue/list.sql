-- list: jobs for operators, newest first. $1 state (NULL: any), $2 tenant id
-- (NULL: any), $3 only jobs finished (or, while live, created) at or after
-- this time (NULL: any), $4 most rows.
--
-- The two tables are read apart so that the history's bound is a plain
-- range on its partition key: partitions older than $3 are pruned.
SELECT * FROM (
    SELECT id, tenant_id, conversation_id, kind, priority, state, payload,
           attempt AS attempts, max_attempts, NULL::jsonb AS result, last_error AS error,
           lease_owner AS worker, NULL::integer AS input_tokens,
           NULL::integer AS output_tokens, created_at, started_at,
           NULL::timestamptz AS finished_at, run_at
    FROM jobs
    WHERE ($1::job_state IS NULL OR state = $1)
      AND ($2::uuid IS NULL OR tenant_id = $2)
      AND created_at >= coalesce($3::timestamptz, '-infinity')
    UNION ALL
    SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
           max_attempts, result, error, worker, input_tokens, output_tokens,
           created_at, started_at, finished_at, NULL::timestamptz AS run_at
    FROM job_history
    WHERE ($1::job_state IS NULL OR state = $1)
      AND ($2::uuid IS NULL OR tenant_id = $2)
      AND finished_at >= coalesce($3::timestamptz, '-infinity')
) AS j
ORDER BY coalesce(finished_at, created_at) DESC, id DESC
LIMIT $4
