-- reserve: takes one request and $5 tokens from the budget of endpoint $1
-- and model $2, both or neither, in one UPDATE of one row (GCRA, see
-- docs/provider-limits.md).
--
-- $3 seconds per request, $4 request tolerance in seconds, $5 tokens to
-- reserve, $6 seconds per token, $7 token tolerance in seconds. A limit that
-- is not set has 0 and 0: every reservation fits.
--
-- Each budget keeps a theoretical arrival time (tat): the time up to which
-- it is used. A reservation of n units moves it to greatest(tat, now()) +
-- n * interval, and is granted only when that is at most now() + tolerance.
-- Concurrent reservations of one budget queue on the row lock and each
-- re-checks the condition against the row as the previous one left it, so
-- no two processes can both take the last of a budget.
--
-- One row: `reserved_after` (the budget's token counter after this
-- reservation) when granted, NULL when not; `wait_s`, when not granted,
-- how long until this reservation would fit (read from the statement's
-- snapshot: a hint, 0 when a concurrent reservation changed the row);
-- `present` false when the budget row does not exist yet (ensure_budget.sql).
WITH current AS (
    SELECT requests_tat, tokens_tat
    FROM provider_budgets
    WHERE endpoint = $1 AND model = $2
),
taken AS (
    UPDATE provider_budgets b
    SET requests_tat = greatest(b.requests_tat, now()) + make_interval(secs => $3::float8),
        tokens_tat = greatest(b.tokens_tat, now()) + make_interval(secs => $5::float8 * $6::float8),
        tokens_reserved = b.tokens_reserved + $5::bigint,
        updated_at = now()
    WHERE b.endpoint = $1 AND b.model = $2
      AND greatest(b.requests_tat, now()) + make_interval(secs => $3::float8)
          <= now() + make_interval(secs => $4::float8)
      AND greatest(b.tokens_tat, now()) + make_interval(secs => $5::float8 * $6::float8)
          <= now() + make_interval(secs => $7::float8)
    RETURNING b.tokens_reserved
)
SELECT (SELECT tokens_reserved FROM taken) AS reserved_after,
       greatest(
           extract(epoch FROM greatest(c.requests_tat, now()) - now()) + $3::float8 - $4::float8,
           extract(epoch FROM greatest(c.tokens_tat, now()) - now()) + $5::float8 * $6::float8 - $7::float8,
           0
       )::float8 AS wait_s,
       c.requests_tat IS NOT NULL AS present
FROM (SELECT 1) AS one
LEFT JOIN current c ON true
