-- jobs_live: one page of live jobs (queued, processing) for the operator
-- console, newest first by id (UUIDv7: submission order), after the cursor.
-- $1 state (NULL: both), $2 tenant id, $3 priority, $4 kind, $5 conversation
-- id, $6 submitted at or after, $7 submitted before, $8 ILIKE pattern on the
-- last error, $9 cursor: only ids below it (NULL: from the newest), $10 most
-- rows. NULL filters are not applied (custom plans drop them: see
-- custom_plans.sql). Walks the primary key backwards, so a page costs about
-- `limit / selectivity` index entries.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload,
       attempt AS attempts, max_attempts, NULL::jsonb AS result, last_error AS error,
       lease_owner AS worker, NULL::integer AS input_tokens,
       NULL::integer AS output_tokens, created_at, started_at,
       NULL::timestamptz AS finished_at, run_at
FROM jobs
WHERE ($1::job_state IS NULL OR state = $1)
  AND ($2::uuid IS NULL OR tenant_id = $2)
  AND ($3::smallint IS NULL OR priority = $3)
  AND ($4::text IS NULL OR kind = $4)
  AND ($5::uuid IS NULL OR conversation_id = $5)
  AND ($6::timestamptz IS NULL OR created_at >= $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::text IS NULL OR last_error ILIKE $8)
  AND ($9::uuid IS NULL OR id < $9)
ORDER BY id DESC
LIMIT $10
