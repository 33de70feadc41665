-- read: the pieces after each stream's cursor.
--
-- $1 job ids, $2 attempts, $3 seqs: per job, the last piece already sent
-- (attempt, seq); (0, 0) for none. $4: most pieces per job (the caller
-- reads again for more). Rows of later attempts come after those of
-- earlier ones, so a reader sees an interrupted attempt end before the
-- next begins.
--
-- LATERAL with a LIMIT keeps the plan to one primary-key range scan per
-- job, whatever the planner believes of the table's size: a hash join
-- over the whole table (what an unanalysed table gets otherwise) costs a
-- sequential scan per read.
SELECT d.job_id, d.attempt, d.seq, d.text
FROM unnest($1::uuid[], $2::int[], $3::int[]) AS c(job_id, attempt, seq)
CROSS JOIN LATERAL (
    SELECT s.job_id, s.attempt, s.seq, s.text
    FROM stream_deltas s
    WHERE s.job_id = c.job_id AND (s.attempt, s.seq) > (c.attempt, c.seq)
    ORDER BY s.attempt, s.seq
    LIMIT $4
) AS d
ORDER BY d.job_id, d.attempt, d.seq
