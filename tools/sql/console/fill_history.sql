-- fill_history: `skipjack-bench console`'s finished jobs, in a scratch
-- database: $1 jobs finished evenly over the last $2 days, spread over
-- every tenant and over $1 / 10 conversations; 90% completed, 8% failed
-- (two error texts), 2% cancelled; 5% webhook jobs; priorities 1..10. Ids
-- are UUIDv7-shaped: the submission time in milliseconds, then random.
WITH t AS (SELECT array_agg(id ORDER BY name) AS ids FROM tenants),
rows_ AS (
    SELECT i,
           now() - ($2 * interval '1 day') * (i::float8 / $1) AS finished_at,
           random() AS r
    FROM generate_series(1, $1) AS i
)
INSERT INTO job_history (id, tenant_id, conversation_id, kind, priority, state, payload,
                         attempts, max_attempts, result, error, worker, input_tokens,
                         output_tokens, created_at, started_at, finished_at)
SELECT (lpad(to_hex((extract(epoch FROM finished_at - interval '3 s') * 1000)::bigint), 12, '0')
        || '7' || substr(md5(i::text), 1, 19))::uuid,
       t.ids[1 + i % array_length(t.ids, 1)],
       md5('conversation' || (i % ($1 / 10)))::uuid,
       CASE WHEN i % 20 = 0 THEN 'webhook' ELSE 'chat' END,
       1 + i % 10,
       (CASE WHEN r < 0.90 THEN 'completed' WHEN r < 0.98 THEN 'failed' ELSE 'cancelled' END)::job_state,
       jsonb_build_object('user_id', 'user-' || i % 5000, 'message', 'hello number ' || i),
       CASE WHEN r < 0.90 THEN 1 ELSE 5 END, 5,
       CASE WHEN r < 0.90 THEN jsonb_build_object('response', 'reply ' || i, 'model', 'sim') END,
       CASE WHEN r >= 0.98 THEN 'cancelled by the client'
            WHEN r >= 0.90 AND i % 2 = 0 THEN 'provider said: rate limited (429)'
            WHEN r >= 0.90 THEN 'timeout after 60 s' END,
       'worker-' || i % 8,
       CASE WHEN r < 0.90 THEN 40 END, CASE WHEN r < 0.90 THEN 120 END,
       finished_at - interval '3 s', finished_at - interval '2 s', finished_at
FROM rows_ CROSS JOIN t
