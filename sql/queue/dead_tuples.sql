-- dead_tuples: dead row versions in the live jobs table, from the
-- statistics (every claim and finish leaves one behind until vacuum), and
-- whether the table has outgrown the size its statistics were taken at:
-- more than twice the pages of the last VACUUM or ANALYZE (counting at
-- least 32). Generic plans on `jobs` are made from those statistics, and a
-- plan made while the table held a page or two reads all of it.
SELECT coalesce(s.n_dead_tup, 0)::bigint,
       pg_relation_size(c.oid) / current_setting('block_size')::bigint
           > 2 * greatest(c.relpages, 32)
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'jobs'::regclass
