-- clear_stats_snapshot: read the statistics views afresh in this session.
SELECT pg_stat_clear_snapshot()
