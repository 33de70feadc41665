-- The raw ceiling of a drain: the least SQL a Postgres queue that keeps
-- history can run per batch, one statement: claim up to 500 ready jobs
-- with SKIP LOCKED in priority order and move them to the history table.
-- No leases, no attempts, no conversations, no handler: what skipjack's
-- drain is compared against (bench/raw_drain.sh, BENCHMARKS.md). A pgbench
-- script (\gset, \if, \sleep are pgbench's).
WITH claimed AS (
    SELECT id FROM raw_jobs
    ORDER BY priority DESC, run_at, id
    LIMIT 500
    FOR UPDATE SKIP LOCKED
),
done AS (
    DELETE FROM raw_jobs j USING claimed c WHERE j.id = c.id
    RETURNING j.id, j.priority, j.payload, j.created_at
),
moved AS (
    INSERT INTO raw_history (id, priority, payload, created_at, finished_at)
    SELECT id, priority, payload, created_at, now() FROM done
    RETURNING 1
)
SELECT count(*) AS moved FROM moved \gset
-- Once the queue is empty, hold the connection a moment: the script reads
-- the server's CPU while the backends still live.
\if :moved = 0
\sleep 3 s
\endif
