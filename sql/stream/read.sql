-- read: the pieces after each stream's cursor.
--
-- $1 job ids, $2 attempts, $3 seqs: per job, the last piece already sent
-- (attempt, seq); (0, 0) for none. Rows of later attempts come after those
-- of earlier ones, so a reader sees an interrupted attempt end before the
-- next begins. An index scan on the primary key per job.
SELECT d.job_id, d.attempt, d.seq, d.text
FROM unnest($1::uuid[], $2::int[], $3::int[]) AS c(job_id, attempt, seq)
JOIN stream_deltas d
  ON d.job_id = c.job_id AND (d.attempt, d.seq) > (c.attempt, c.seq)
ORDER BY d.job_id, d.attempt, d.seq
