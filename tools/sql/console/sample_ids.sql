-- sample_ids: $1 random job ids, half live and half finished, for
-- `skipjack-bench console`'s job page requests (one sort of each table).
(SELECT id FROM jobs ORDER BY random() LIMIT $1 / 2)
UNION ALL
(SELECT id FROM job_history ORDER BY random() LIMIT $1 / 2)
