-- stored: which of the jobs $1 (uuid[]) exist, live or finished, with
-- their creation time. Asked after an enqueue whose answer was lost: the
-- jobs it inserted exist exactly if it committed. The history is probed by
-- its id index, once per id.
-- Each id is probed by a LATERAL subquery with a LIMIT, so no plan can turn
-- it into a scan of either table (see sql/chat/histories.sql).
SELECT i.id, found.created_at
FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u (id)) AS i
CROSS JOIN LATERAL (SELECT j.created_at FROM jobs j WHERE j.id = i.id
                    UNION ALL
                    SELECT h.created_at FROM job_history h WHERE h.id = i.id
                    LIMIT 1) AS found
