-- lock_lane_finished: locks the conversation_queues row of finished job $1's
-- conversation, if it has one. Taken before retry.sql, so that its look for
-- later jobs of the conversation (a statement of its own, with a snapshot
-- taken after this lock) sees every job enqueued before it, and enqueues
-- after it see the retried job counted as live.
SELECT q.conversation_id
FROM conversation_queues q
WHERE q.conversation_id = (SELECT conversation_id FROM job_history WHERE id = $1 LIMIT 1)
FOR NO KEY UPDATE
