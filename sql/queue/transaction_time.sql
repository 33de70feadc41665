-- transaction_time: now(), the start time of the current transaction. A job
-- inserted in the same transaction gets exactly this created_at (its column
-- default is now()), so queue::enqueue_batch tells its caller the jobs'
-- real creation time without reading them back.
SELECT now()
