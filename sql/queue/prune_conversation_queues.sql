-- prune_conversation_queues: forgets idle conversations among the next $3
-- conversation_queues rows after conversation $1 (NULL: from the first).
-- Idle: no live job (live_jobs = 0) and no job of theirs finished at or
-- after $2 (every enqueue of a conversation ends in a finish, cancel or
-- rescue that writes job_history, so that is the row's last change).
-- Returns the last conversation id scanned (NULL once past the end) and how
-- many rows were deleted; the maintenance loop pages through the table.
--
-- Safe against a concurrent enqueue. A row whose enqueue is in flight is
-- locked by that enqueue's upsert: SKIP LOCKED passes it over. A row an
-- enqueue changed after this statement's snapshot is re-read under the row
-- lock and live_jobs = 0 checked again, so a row with a live job is never
-- deleted. An enqueue that comes after the delete finds no row and inserts
-- one, as for a new conversation: its job is the only live one and starts
-- unblocked, and conversation_seq starts again at 1, which is harmless
-- because the sequence only orders live jobs and there are none.
WITH scanned AS (
    SELECT conversation_id
    FROM conversation_queues
    WHERE $1::uuid IS NULL OR conversation_id > $1::uuid
    ORDER BY conversation_id
    LIMIT $3
),
idle AS (
    SELECT q.conversation_id
    FROM conversation_queues q
    JOIN scanned s USING (conversation_id)
    WHERE q.live_jobs = 0
      AND NOT EXISTS (SELECT 1 FROM job_history h
                      WHERE h.conversation_id = q.conversation_id AND h.finished_at >= $2)
    FOR UPDATE OF q SKIP LOCKED
),
pruned AS (
    DELETE FROM conversation_queues q
    USING idle
    WHERE q.conversation_id = idle.conversation_id AND q.live_jobs = 0
    RETURNING q.conversation_id
)
SELECT (SELECT conversation_id FROM scanned ORDER BY conversation_id DESC LIMIT 1) AS last_scanned,
       (SELECT count(*) FROM pruned) AS pruned
