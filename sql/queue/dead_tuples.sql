-- dead_tuples: dead row versions in the live jobs table, from the
-- statistics (every claim and finish leaves one behind until vacuum).
SELECT coalesce(n_dead_tup, 0)::bigint FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass
