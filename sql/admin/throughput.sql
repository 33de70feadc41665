-- throughput: jobs finished per minute over the last hour, by outcome, for
-- the console's overview chart. Only minutes with jobs have a row (the
-- caller fills the gaps). Reads the newest day partitions by their
-- finished_at BRIN index (V12).
SELECT date_trunc('minute', finished_at) AS minute,
       count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
FROM job_history
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY 1
ORDER BY 1
