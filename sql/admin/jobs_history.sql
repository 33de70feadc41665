-- jobs_history: one page of finished jobs (completed, failed, cancelled)
-- for the operator console, newest first by id (UUIDv7: submission order),
-- scanning at most a fixed number of jobs so that any filter answers in
-- bounded time.
--
-- The inner scan takes the filters that keep it a walk down the ids: $1
-- state (failed and cancelled through job_history_unsuccessful, completed
-- along job_history_id), $5 conversation id (job_history_conversation: a
-- conversation's few jobs, then sorted), and the id range: $6 lowest id
-- (from `since`), $7 ids below it (the cursor, or `until`); $11 `since`
-- prunes the day partitions (a job finishes after it is submitted; an hour
-- of slack for clocks). It stops after $10 jobs. The other filters, $2
-- tenant id, $3 priority, $4 kind and $8 an ILIKE pattern on the error, are
-- applied to what it found (`hit`), so a combination that matches nothing
-- costs $10 jobs scanned, not the whole history. (The tenant's index is in
-- finished_at order, not id order: a walk by it would read all of a large
-- tenant's jobs to sort them.)
--
-- Returns the hits, at most $9 of them, then the last job scanned when the
-- scan used all of its $10 jobs (`scanned = $10`, a hit or not): the caller
-- continues below it.
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
        SELECT id, tenant_id, conversation_id, kind, priority, state, payload, attempts,
               max_attempts, result, error, worker, input_tokens, output_tokens,
               created_at, started_at, finished_at, NULL::timestamptz AS run_at
        FROM job_history
        WHERE ($1::job_state IS NULL OR state = $1)
          AND ($5::uuid IS NULL OR conversation_id = $5)
          AND finished_at >= coalesce($11::timestamptz - interval '1 hour', '-infinity')
          AND ($6::uuid IS NULL OR id >= $6)
          AND ($7::uuid IS NULL OR id < $7)
        ORDER BY id DESC
        LIMIT $10
    ) s
) scan
WHERE hit OR scanned = $10
LIMIT $9 + 1
