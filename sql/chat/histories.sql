-- histories: the messages of every conversation in $1 (uuid[]), grouped by
-- conversation and in order within each: the history loader's one query
-- for a burst of jobs that start together.
SELECT conversation_id, role, content
FROM messages
WHERE conversation_id = ANY($1)
ORDER BY conversation_id, seq
