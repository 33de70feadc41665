-- claim_strict: claim.sql for processes running at a schema before V10
-- (a rolling upgrade's first steps): strict priority order, no fair shares
-- or caps, over the jobs_claim index those schemas have.
--
-- Hands up to $2 ready jobs to worker $1, leased for $3 seconds.
--
-- $4 kinds text[]: the job kinds the worker has handlers for.
-- One short statement, committed at once: no transaction or row lock is held
-- while the jobs run. Walks the partial index jobs_claim (ready, unblocked
-- jobs only) in priority order, skipping rows another claimer has locked.
WITH picked AS (
    SELECT id
    FROM jobs
    WHERE state = 'queued' AND NOT blocked AND run_at <= now() AND kind = ANY($4)
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j
SET state = 'processing',
    attempt = j.attempt + 1,
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $3),
    -- The clock, not now(): the statement's start can precede the commit of
    -- the finish that let this job be claimed (or of its enqueue) when the
    -- backend waited or was descheduled in between, and a turn would then
    -- seem to start before the previous one finished.
    started_at = coalesce(j.started_at, clock_timestamp())
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.tenant_id, j.conversation_id, j.kind, j.priority, j.payload,
          j.attempt, j.max_attempts, j.created_at, j.started_at, j.lease_expires_at
