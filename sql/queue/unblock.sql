-- unblock: lets the next job of each conversation in $1 (uuid[]) be claimed.
--
-- Run in the transaction that finished the conversation's head job, as a
-- statement of its own after finish/rescue/cancel: that statement locked the
-- conversation_queues row, so this statement's snapshot sees every job
-- enqueued before the lock, and enqueues after it see the decremented count.
-- Idempotent: a conversation that still has an unblocked live job is left
-- alone. Wakes waiting workers when a job became claimable now.
WITH next AS (
    SELECT DISTINCT ON (conversation_id) id, conversation_id
    FROM jobs
    WHERE conversation_id = ANY($1) AND blocked
    ORDER BY conversation_id, conversation_seq
),
unblocked AS (
    UPDATE jobs j
    SET blocked = false
    FROM next
    WHERE j.id = next.id
      AND NOT EXISTS (SELECT 1 FROM jobs live
                      WHERE live.conversation_id = next.conversation_id AND NOT live.blocked)
    RETURNING j.id, j.run_at
),
wake AS (
    SELECT pg_notify('skipjack_jobs', count(*)::text)
    FROM unblocked
    WHERE run_at <= now()
    HAVING count(*) > 0
       AND EXISTS (SELECT 1 FROM queue_waiters WHERE channel = 'skipjack_jobs')
)
SELECT (SELECT count(*) FROM unblocked) AS unblocked,
       (SELECT count(*) FROM wake) AS notified
