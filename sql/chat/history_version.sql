-- history_version: the seq and created_at of the last message of
-- conversation $1 (no row: no messages yet). One backward step on the
-- primary key: what a history cache hit costs Postgres instead of the
-- whole history.
SELECT seq, created_at FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 1
