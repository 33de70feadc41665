-- waiter_recheck: which of the jobs $1 (uuid[]) are finished. An API process
-- runs it every few seconds for all its waiting long-polls at once, so no
-- long-poll can outwait a NOTIFY that was lost (a listener that died
-- silently, a completion sent while nobody was registered). Finished jobs
-- live only in job_history; its id index is probed once per id.
SELECT DISTINCT h.id
FROM job_history h
WHERE h.id = ANY($1::uuid[])
