-- get: one job, live or finished, by id; $2 limits it to a tenant (NULL: any).
-- One statement, so one snapshot: a job moving from jobs to job_history at the
-- same moment is seen in exactly one of them.
--
-- Only the job_history partitions the job can be in are opened. A job id is
-- a UUIDv7 (version 7: its first 48 bits are its creation time in Unix
-- milliseconds), and a job finishes after it was created, at the finishing
-- transaction's now(): so finished_at lies between the id's time and now.
-- Two days' margin below (an application host's clock ahead of the
-- database's) and one above (the database's clock set back) keep that true
-- on a skewed clock; an id of another version (inserted by hand) gets no
-- lower bound. Postgres prunes the other day partitions when the statement
-- starts, instead of probing each one's index: with a 30-day retention a
-- read opens 4 relations instead of 39.
SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
       max_attempts, result, error, worker, input_tokens, output_tokens,
       created_at, started_at, finished_at, run_at
FROM all_jobs
WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
  -- NULL for a live job (the view's jobs branch): the bounds are the history's.
  AND (finished_at IS NULL
       OR (finished_at >= CASE WHEN get_byte(uuid_send($1), 6) >> 4 = 7
                               THEN to_timestamp(('x' || encode(substring(uuid_send($1) FROM 1 FOR 6), 'hex'))
                                                     ::bit(48)::bigint / 1000.0)
                                    - interval '2 days'
                               ELSE '-infinity' END
           AND finished_at < now() + interval '1 day'))
LIMIT 1
