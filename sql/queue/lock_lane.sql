-- lock_lane: locks the conversation_queues row of job $1's conversation, if it
-- has one, and returns the conversation id. Taken before cancel.sql deletes
-- the job, so cancel locks the conversation before the job, as finish and
-- rescue do (they hold the head job and the conversation while unblocking
-- the next job; locking in the other order could deadlock with them).
SELECT q.conversation_id
FROM conversation_queues q
WHERE q.conversation_id = (SELECT conversation_id FROM jobs WHERE id = $1)
FOR NO KEY UPDATE
