-- ensure_budget: creates the budget row of endpoint $1 and model $2 when it
-- does not exist yet, its budget full (reserve.sql only updates rows).
INSERT INTO provider_budgets (endpoint, model)
VALUES ($1, $2)
ON CONFLICT (endpoint, model) DO NOTHING
