-- ensure_budget_limits: creates the budget row of endpoint $1 and model $2
-- when it does not exist yet (its budget full), and records the limits this
-- worker process enforces on it: $3 requests per minute, $4 tokens per
-- minute, $5 request burst, $6 token burst, NULL where there is no limit.
-- Read by the operator console (sql/admin/budgets.sql); reservations
-- (reserve.sql) carry their own parameters and never read these. Schema 13.
INSERT INTO provider_budgets (endpoint, model, rpm, tpm, request_burst, token_burst)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (endpoint, model) DO UPDATE
SET rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm,
    request_burst = EXCLUDED.request_burst, token_burst = EXCLUDED.token_burst
