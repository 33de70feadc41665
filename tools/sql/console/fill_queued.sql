-- fill_queued: `skipjack-bench console`'s queued jobs, in a scratch
-- database: $1 ready chat jobs submitted over the last 10 minutes, spread
-- over every tenant, priorities 1..10, no conversation.
WITH t AS (SELECT array_agg(id ORDER BY name) AS ids FROM tenants),
rows_ AS (
    SELECT i, now() - interval '10 minutes' * (1 - i::float8 / $1) AS created_at
    FROM generate_series(1, $1) AS i
)
INSERT INTO jobs (id, tenant_id, kind, priority, state, payload, run_at, created_at)
SELECT (lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0')
        || '7' || substr(md5('q' || i), 1, 19))::uuid,
       t.ids[1 + i % array_length(t.ids, 1)],
       'chat', 1 + i % 10, 'queued',
       jsonb_build_object('user_id', 'user-' || i % 5000, 'message', 'queued number ' || i),
       created_at, created_at
FROM rows_ CROSS JOIN t
