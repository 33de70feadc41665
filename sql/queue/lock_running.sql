-- lock_running: locks job $1's row if it is processing (and belongs to
-- tenant $2, NULL: any), and returns its id. Taken before lock_lane.sql when
-- cancelling a running job: finish and rescue lock the head job before its
-- conversation, so cancel does the same for the job it shares with them.
SELECT id
FROM jobs
WHERE id = $1 AND state = 'processing' AND ($2::uuid IS NULL OR tenant_id = $2)
FOR UPDATE
