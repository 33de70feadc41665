-- custom_plans: plan the rest of this transaction's statements for their
-- actual parameters, and bound them. The list statements take optional
-- filters (`$n IS NULL OR column = $n`); a generic plan would have to serve
-- every combination and could use no filter's index, while a custom plan
-- drops the filters that are not given. A combination of filters that
-- matches few jobs walks the whole history: $1 (e.g. '5s') stops it there.
-- Both settings are local to the transaction.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
       set_config('statement_timeout', $1, true)
