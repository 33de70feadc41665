-- dead_rows: dead row versions in `jobs`, as the statistics last counted
-- them.
SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'jobs'
