-- workers: the workers alive and their jobs in flight, for the console.
-- A worker holding leases is alive (jobs_lease index: processing jobs
-- only); one waiting for work is registered on the 'skipjack_jobs' channel
-- (queue_waiters) with nothing in flight. The oldest lease expiry says how
-- soon the worker must renew.
SELECT worker, sum(in_flight)::bigint AS in_flight,
       min(lease_expires_at) AS lease_expires_at, max(seen_at) AS waiting_since
FROM (
    SELECT lease_owner AS worker, count(*) AS in_flight,
           min(lease_expires_at) AS lease_expires_at, NULL::timestamptz AS seen_at
    FROM jobs
    WHERE state = 'processing'
    GROUP BY lease_owner
    UNION ALL
    SELECT waiter, 0, NULL, seen_at
    FROM queue_waiters
    WHERE channel = 'skipjack_jobs'
) AS w
GROUP BY worker
ORDER BY worker
