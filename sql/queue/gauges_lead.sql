-- gauges_lead: tries to become the one process that refreshes the queue
-- gauges (src/queue/gauges.rs). A session advisory lock: held for as long as
-- the connection that took it lives, released by the server when that
-- process dies or its connection drops, so another process takes over.
SELECT pg_try_advisory_lock(hashtext('skipjack.queue_gauges'))
