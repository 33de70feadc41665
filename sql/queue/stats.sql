-- stats: queued jobs by priority (ready or waiting), jobs being processed,
-- and the age in seconds of the oldest job that is ready to run.
SELECT
    (SELECT coalesce(jsonb_object_agg(priority, n), '{}'::jsonb)
     FROM (SELECT priority, count(*) AS n FROM jobs WHERE state = 'queued'
           GROUP BY priority) AS p) AS depth,
    (SELECT count(*) FROM jobs WHERE state = 'processing') AS processing,
    (SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8
     FROM jobs WHERE state = 'queued' AND NOT blocked AND run_at <= now())
        AS oldest_queued_age_seconds
