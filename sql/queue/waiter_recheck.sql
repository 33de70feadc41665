-- waiter_recheck: which of the jobs $1 (uuid[]) are finished. An API process
-- runs it every few seconds for all its waiting long-polls at once, so no
-- long-poll can outwait a NOTIFY that was lost (a listener that died
-- silently, a completion sent while nobody was registered). Finished jobs
-- live only in job_history; its id index is probed once per id.
-- The probe is a LATERAL subquery with a LIMIT, so no plan can turn it into
-- a scan of the history (see sql/chat/histories.sql).
SELECT i.id
FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u (id)) AS i
CROSS JOIN LATERAL (SELECT 1 FROM job_history h WHERE h.id = i.id LIMIT 1) AS h
