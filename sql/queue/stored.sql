-- stored: which of the jobs $1 (uuid[]) exist, live or finished. Asked
-- after a COMMIT whose answer was lost: the jobs it inserted exist exactly if
-- it committed. The history is probed by its id index, once per id.
SELECT id FROM jobs WHERE id = ANY($1::uuid[])
UNION ALL
SELECT id FROM job_history WHERE id = ANY($1::uuid[])
