-- chat_report: what the chat worker benchmark (`chat-bench`) measures,
-- from job_history alone. $1: the simulated LLM latency in seconds.
--
-- overhead: finished_at - started_at - $1 per completed job: everything the
-- worker adds around the LLM call between the claim that started the job
-- (started_at, set by the claim statement) and the start of the transaction
-- that completed it (finished_at is that transaction's now()): handing the
-- job to an executor, the history read, timer slack, waiting for the
-- completer. A job attempted once has started_at = its only claim.
-- handoff: started_at of turn k+1 - finished_at of turn k of the same
-- conversation: the completion commit, the unblock, the wake-up and the
-- claim that follow one turn before the next can start. Together they are
-- the time per turn that is not the LLM's.
WITH done AS (
    SELECT conversation_id, started_at, finished_at, state
    FROM job_history
    WHERE kind = 'chat'
),
overhead AS (
    SELECT extract(epoch FROM finished_at - started_at) - $1 AS s
    FROM done WHERE state = 'completed'
),
handoff AS (
    SELECT extract(epoch FROM started_at - lag(finished_at)
                   OVER (PARTITION BY conversation_id ORDER BY started_at)) AS s
    FROM done
)
SELECT (SELECT count(*) FROM done WHERE state = 'completed') AS completed,
       (SELECT count(*) FROM done WHERE state <> 'completed') AS not_completed,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM overhead)::float8 AS overhead_p50,
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY s) FROM overhead)::float8 AS overhead_p99,
       (SELECT max(s) FROM overhead)::float8 AS overhead_max,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM handoff WHERE s IS NOT NULL)::float8 AS handoff_p50,
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY s) FROM handoff WHERE s IS NOT NULL)::float8 AS handoff_p99,
       (SELECT count(DISTINCT finished_at) FROM done) AS completion_batches
