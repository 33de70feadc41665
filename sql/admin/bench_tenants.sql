-- bench_tenants: `skipjack bench-console`'s tenants bench-0 .. bench-($1-1),
-- in a scratch database.
INSERT INTO tenants (id, name)
SELECT gen_random_uuid(), 'bench-' || i FROM generate_series(0, $1 - 1) AS i
