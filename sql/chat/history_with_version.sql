-- history_with_version: the messages of conversation $1, in order, with the
-- seq and created_at of each, so the caller knows which version of the
-- history it read (those of the last row).
SELECT seq, role, content, created_at FROM messages WHERE conversation_id = $1 ORDER BY seq
