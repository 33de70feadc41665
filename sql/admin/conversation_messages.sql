-- conversation_messages: a conversation's turns in order with the job that
-- appended each, at most $2 from seq $3 on. $1 conversation id.
SELECT seq, role, content, job_id, tokens, created_at
FROM messages
WHERE conversation_id = $1 AND seq >= $3
ORDER BY seq
LIMIT $2
