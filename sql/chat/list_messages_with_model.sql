-- list_messages_with_model: list_messages.sql with the model that wrote
-- each assistant message (schema version 6, messages.model), for processes
-- running at schema 6 or newer. $1 conversation id.
SELECT seq, role, content, job_id, tokens, model, created_at
FROM messages
WHERE conversation_id = $1
ORDER BY seq
