-- token_cost.sql: LLM tokens used and their estimated cost, by UTC day and
-- tenant, over the chat turns that completed in a time window.
--
-- Parameters (psql variables: psql -v name=value):
--   from                 start of the window on finished_at (timestamptz,
--                        default: 30 days ago)
--   to                   end of the window, exclusive (default: now)
--   tenant               tenant name or id (default: every tenant)
--   input_usd_per_mtok   price of a million input tokens (default 3.00)
--   output_usd_per_mtok  price of a million output tokens (default 15.00)
--
-- The default prices are placeholders: pass your provider's. Tokens are
-- what the provider reported for the attempt that completed; attempts that
-- failed are not recorded, so the cost is a lower bound when retries were
-- frequent (see retries_rescues.sql). Jobs of no tenant show as "(none)".
--
--   psql "$DATABASE_URL" -v input_usd_per_mtok=0.8 -v output_usd_per_mtok=4 -f sql/audit/token_cost.sql
\if :{?from}
\else
\set from ''
\endif
\if :{?to}
\else
\set to ''
\endif
\if :{?tenant}
\else
\set tenant ''
\endif
\if :{?input_usd_per_mtok}
\else
\set input_usd_per_mtok 3.00
\endif
\if :{?output_usd_per_mtok}
\else
\set output_usd_per_mtok 15.00
\endif

SELECT (h.finished_at AT TIME ZONE 'UTC')::date AS day_utc,
       coalesce(t.name, '(none)') AS tenant,
       count(*) AS jobs,
       coalesce(sum(h.input_tokens), 0) AS input_tokens,
       coalesce(sum(h.output_tokens), 0) AS output_tokens,
       round(coalesce(sum(h.input_tokens), 0) * :'input_usd_per_mtok'::numeric / 1e6
             + coalesce(sum(h.output_tokens), 0) * :'output_usd_per_mtok'::numeric / 1e6, 6)
           AS est_cost_usd
FROM job_history AS h
LEFT JOIN tenants AS t ON t.id = h.tenant_id
WHERE h.state = 'completed'
  AND h.finished_at >= coalesce(nullif(:'from', '')::timestamptz, now() - interval '30 days')
  AND h.finished_at < coalesce(nullif(:'to', '')::timestamptz, now())
  AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
GROUP BY 1, 2
ORDER BY 1, 2;
