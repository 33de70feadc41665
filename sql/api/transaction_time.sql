-- transaction_time: now(), the start time of the current transaction. A job
-- inserted in the same transaction gets exactly this created_at (its column
-- default is now()), so the API answers a submission with the job's real
-- creation time without reading the jobs back.
SELECT now()
