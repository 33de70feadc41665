-- bench_analyze: statistics (and visibility maps) for the freshly filled
-- scratch database of `skipjack bench-console`.
VACUUM ANALYZE
