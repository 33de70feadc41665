-- history.sql: the jobs of one user or one conversation, oldest first, live
-- and finished: what was asked and when, how long it waited and ran, what
-- came back or why it failed, how many attempts and tokens it took, and
-- which worker ran it last.
--
-- Parameters (psql variables: psql -v name=value):
--   user_id       the application's user id         } at least one of
--   conversation  a conversation id (uuid)          } these two
--   tenant        tenant name or id (default: every tenant; user ids are
--                 the application's own and may repeat across tenants)
--   since         only jobs submitted at or after this time (timestamptz,
--                 default: all)
--   limit         most rows (default 1000)
--
-- Columns: wait_s is submission to first start; run_s is first start to
-- finish (all attempts and the backoff between them; still running: to
-- now). Live jobs (queued, processing) have no finished_at, response or
-- tokens yet; their error is the last retried one.
--
--   psql "$DATABASE_URL" -v tenant=acme -v user_id=alice -f sql/audit/history.sql
\if :{?user_id}
\else
\set user_id ''
\endif
\if :{?conversation}
\else
\set conversation ''
\endif
\if :{?tenant}
\else
\set tenant ''
\endif
\if :{?since}
\else
\set since ''
\endif
\if :{?limit}
\else
\set limit 1000
\endif
SELECT :'user_id' = '' AND :'conversation' = '' AS audit_missing_subject \gset
\if :audit_missing_subject
\warn 'history.sql needs -v user_id=ID or -v conversation=UUID'
SELECT 'history.sql needs -v user_id=ID or -v conversation=UUID'::integer AS missing_parameter;
\endif

SELECT j.id AS job_id,
       j.conversation_id,
       c.user_id,
       t.name AS tenant,
       j.state,
       j.priority,
       j.attempts,
       j.created_at AS submitted_at,
       j.started_at,
       j.finished_at,
       round(extract(epoch FROM j.started_at - j.created_at)::numeric, 3) AS wait_s,
       round(extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at)::numeric, 3)
           AS run_s,
       j.payload ->> 'message' AS message,
       j.result ->> 'response' AS response,
       j.error,
       j.input_tokens,
       j.output_tokens,
       j.worker
FROM all_jobs AS j
LEFT JOIN conversations AS c ON c.id = j.conversation_id
LEFT JOIN tenants AS t ON t.id = j.tenant_id
WHERE (:'conversation' = '' OR j.conversation_id = nullif(:'conversation', '')::uuid)
  AND (:'user_id' = '' OR c.user_id = :'user_id')
  AND (:'tenant' = '' OR t.name = :'tenant' OR t.id::text = :'tenant')
  AND j.created_at >= coalesce(nullif(:'since', '')::timestamptz, '-infinity')
ORDER BY j.created_at, j.id
LIMIT :'limit'::bigint;
