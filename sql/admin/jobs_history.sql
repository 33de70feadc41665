-- jobs_history: one page of finished jobs (completed, failed, cancelled)
-- for the operator console, newest first by id (UUIDv7: submission order),
-- after the cursor. Parameters as jobs_live.sql: $1 state, $2 tenant id,
-- $3 priority, $4 kind, $5 conversation id, $6 submitted at or after, $7
-- submitted before, $8 ILIKE pattern on the error, $9 cursor (ids below
-- it), $10 most rows.
--
-- A job finishes after it is submitted, so `finished_at >= $6` holds for
-- every match and prunes the day partitions older than $6. The order is a
-- merge of each partition's job_history_id index read backwards; a filter
-- on the tenant or the conversation may use their indexes instead.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
       max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, NULL::timestamptz AS run_at
FROM job_history
WHERE ($1::job_state IS NULL OR state = $1)
  AND ($2::uuid IS NULL OR tenant_id = $2)
  AND ($3::smallint IS NULL OR priority = $3)
  AND ($4::text IS NULL OR kind = $4)
  AND ($5::uuid IS NULL OR conversation_id = $5)
  AND ($6::timestamptz IS NULL OR created_at >= $6)
  AND finished_at >= coalesce($6::timestamptz, '-infinity')
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::text IS NULL OR error ILIKE $8)
  AND ($9::uuid IS NULL OR id < $9)
ORDER BY id DESC
LIMIT $10
