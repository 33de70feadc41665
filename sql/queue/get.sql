-- get: one job, live or finished, by id; $2 limits it to a tenant (NULL: any).
-- One statement, so one snapshot: a job moving from jobs to job_history at the
-- same moment is seen in exactly one of them.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
       max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, run_at
FROM all_jobs
WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
LIMIT 1
