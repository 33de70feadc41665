-- finish: writes the outcomes of a batch of jobs run by worker $1.
--
-- $2 ids uuid[], $3 attempts integer[], $4 outcomes text[] ('completed',
-- 'failed', 'retry' or 'snooze'), $5 results jsonb[], $6 errors text[], $7
-- retry delays in seconds float8[], $8 input tokens integer[], $9 output
-- tokens integer[].
--
-- Fenced: a row changes only while (id, lease owner, attempt) still match, so
-- a worker that lost its lease changes nothing; the ids it gets no row for
-- were fenced off. A retry of a job with attempts left goes back to the queue
-- at now + delay (with a 'retried' event); a snooze (no provider budget,
-- schema 11) goes back to the queue at now + delay with its attempt given
-- back, so the next claim runs the same attempt number again, and a
-- 'snoozed' event; every other outcome moves the job to job_history in this
-- same statement. Conversations whose head job left
-- are unlocked by unblock.sql, run next in the same transaction.
--
-- Plan: the fence is written as join clauses only (the owner travels in the
-- input rows, and no state is named: a lease owner is set exactly while a
-- job is processing, a CHECK constraint says so). A restriction on `jobs`
-- alone would be estimated from statistics that rarely see a processing job,
-- and the planner would drive the join from `jobs`, rescanning the whole
-- batch for every processing job. As written, the one good plan is a
-- primary-key lookup per batch row, at any queue size.
WITH input AS (
    SELECT i.*, $1::text AS owner
    FROM unnest($2::uuid[], $3::integer[], $4::text[], $5::jsonb[], $6::text[],
                $7::float8[], $8::integer[], $9::integer[])
         AS i (id, attempt, outcome, result, error, retry_in, input_tokens, output_tokens)
),
requeued AS (
    UPDATE jobs j
    SET state = 'queued',
        lease_owner = NULL,
        lease_expires_at = NULL,
        run_at = now() + make_interval(secs => i.retry_in),
        last_error = i.error
    FROM input i
    WHERE j.id = i.id AND j.attempt = i.attempt AND j.lease_owner = i.owner
      AND i.outcome = 'retry' AND j.attempt < j.max_attempts
    RETURNING j.id, j.tenant_id, j.attempt, j.run_at, i.error
),
snoozed AS (
    UPDATE jobs j
    SET state = 'queued',
        lease_owner = NULL,
        lease_expires_at = NULL,
        run_at = now() + make_interval(secs => i.retry_in),
        attempt = j.attempt - 1
    FROM input i
    WHERE j.id = i.id AND j.attempt = i.attempt AND j.lease_owner = i.owner
      AND i.outcome = 'snooze'
    RETURNING j.id, j.tenant_id, i.attempt, j.run_at, i.error
),
done AS (
    DELETE FROM jobs j
    USING input i
    WHERE j.id = i.id AND j.attempt = i.attempt AND j.lease_owner = i.owner
      AND i.outcome <> 'snooze'
      AND NOT (i.outcome = 'retry' AND j.attempt < j.max_attempts)
    RETURNING j.*,
              (CASE i.outcome WHEN 'completed' THEN 'completed' ELSE 'failed' END)::job_state
                  AS final_state,
              i.result AS final_result, i.error AS final_error,
              i.input_tokens AS final_input_tokens, i.output_tokens AS final_output_tokens
),
history AS (
    INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                             idempotency_key, attempts, max_attempts, result, error, worker,
                             input_tokens, output_tokens, created_at, started_at, finished_at)
    SELECT id, tenant_id, conversation_id, kind, priority, final_state, payload,
           idempotency_key, attempt, max_attempts, final_result, final_error, lease_owner,
           final_input_tokens, final_output_tokens, created_at, started_at, now()
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, tenant_id, event, attempt, error, next_run_at, worker)
    SELECT id, tenant_id, 'retried', attempt, error, run_at, $1
    FROM requeued
    UNION ALL
    SELECT id, tenant_id, 'snoozed', attempt, error, run_at, $1
    FROM snoozed
),
lanes AS (
    -- An upsert rather than UPDATE ... FROM: it takes the row locks in
    -- conversation order, as enqueue.sql does, so the two cannot deadlock.
    -- The row always exists (its enqueue created it); excluded.live_jobs
    -- carries the count to subtract.
    INSERT INTO conversation_queues AS q (conversation_id, last_seq, live_jobs)
    SELECT conversation_id, 0, count(*)
    FROM done
    WHERE conversation_id IS NOT NULL
    GROUP BY conversation_id
    ORDER BY conversation_id
    ON CONFLICT (conversation_id) DO UPDATE SET live_jobs = q.live_jobs - excluded.live_jobs
),
wake AS (
    SELECT pg_notify('skipjack_done', string_agg(id::text, ','))
    FROM (SELECT id, (row_number() OVER () - 1) / 200 AS chunk FROM done) AS c
    WHERE EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_done')
    GROUP BY chunk
)
SELECT f.id, f.conversation_id, f.state
FROM (SELECT id, conversation_id, final_state AS state FROM done
      UNION ALL
      SELECT id, NULL, 'queued'::job_state FROM requeued
      UNION ALL
      SELECT id, NULL, 'queued'::job_state FROM snoozed) AS f
CROSS JOIN (SELECT count(*) FROM wake) AS notified
