-- budgets: the provider budgets shared by the workers (sql/llm/reserve.sql),
-- for the console's overview: the limits the workers last recorded (schema
-- 13, read through to_jsonb so that a database at 11 or 12 answers with
-- NULLs), and how many seconds each budget is spent ahead of now (GCRA:
-- 0 when it is full). At most $1 rows.
SELECT endpoint, model, updated_at,
       (to_jsonb(b) ->> 'rpm')::bigint AS rpm,
       (to_jsonb(b) ->> 'tpm')::bigint AS tpm,
       (to_jsonb(b) ->> 'request_burst')::bigint AS request_burst,
       (to_jsonb(b) ->> 'token_burst')::bigint AS token_burst,
       greatest(extract(epoch FROM requests_tat - now()), 0)::float8 AS requests_ahead_s,
       greatest(extract(epoch FROM tokens_tat - now()), 0)::float8 AS tokens_ahead_s
FROM provider_budgets b
ORDER BY endpoint, model
LIMIT $1
