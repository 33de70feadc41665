-- list_messages: the messages of conversation $1 for API readers, in order.
SELECT seq, role, content, job_id, tokens, created_at
FROM messages
WHERE conversation_id = $1
ORDER BY seq
