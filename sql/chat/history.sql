-- history: the messages of conversation $1, in order, as the LLM sees them.
SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY seq
