-- histories: what the LLM is sent of each conversation in $1 (uuid[]) under
-- a budget of $2 estimated tokens, with each conversation's history version;
-- the history loader's one query for a burst of jobs that start together,
-- and the history cache's read-through.
--
-- Kept: the system prompt (the system messages the conversation starts
-- with, seq 1, 2, ...) always, then the newest messages whose costs fit in
-- what the system prompt left of the budget, starting at a user message (a
-- reply without its question is dropped). A message costs
-- greatest(1, ceil(characters / 4)) tokens, as llm::estimate_tokens counts
-- and as chat::budget::trim applies to cached histories: the two must agree.
--
-- Reads only what it keeps (plus one message): the system prompt and the
-- newest messages are walked one primary-key step at a time, newest first,
-- until the budget is spent, so a long conversation costs the database and
-- the worker no more than a short one.
--
-- Every read of messages is a LATERAL subquery with a LIMIT, which the
-- planner cannot turn into a join: it stays a primary-key probe per
-- conversation, even in a plan made while the table was small or never
-- analyzed (a hash join over a sequential scan of messages would be chosen
-- then, and kept by the prepared statement as the table grows).
--
-- One row per kept message, in order, each with its conversation's version
-- (seq and created_at of the newest message, kept or not). A conversation
-- with messages but none kept gets one row with a NULL role; one without
-- messages gets no row.
WITH RECURSIVE
input AS (
    SELECT DISTINCT conversation_id FROM unnest($1::uuid[]) AS i (conversation_id)
),
head AS (
    SELECT i.conversation_id, m.seq, m.role, m.content,
           greatest(1, (char_length(m.content) + 3) / 4) AS cost
    FROM input i
    CROSS JOIN LATERAL (SELECT m.seq, m.role, m.content FROM messages m
                        WHERE m.conversation_id = i.conversation_id AND m.seq = 1
                          AND m.role = 'system'
                        LIMIT 1) AS m
    UNION ALL
    SELECT h.conversation_id, m.seq, m.role, m.content,
           greatest(1, (char_length(m.content) + 3) / 4)
    FROM head h
    CROSS JOIN LATERAL (SELECT m.seq, m.role, m.content FROM messages m
                        WHERE m.conversation_id = h.conversation_id AND m.seq = h.seq + 1
                          AND m.role = 'system'
                        LIMIT 1) AS m
),
latest AS (
    SELECT i.conversation_id, l.seq, l.created_at,
           coalesce((SELECT max(h.seq) FROM head h
                     WHERE h.conversation_id = i.conversation_id), 0) AS head_end,
           $2::bigint - coalesce((SELECT sum(h.cost) FROM head h
                                  WHERE h.conversation_id = i.conversation_id), 0) AS allowance
    FROM input i
    JOIN LATERAL (SELECT m.seq, m.created_at FROM messages m
                  WHERE m.conversation_id = i.conversation_id
                  ORDER BY m.seq DESC LIMIT 1) AS l ON true
),
tail AS (
    SELECT l.conversation_id, m.seq, m.role, m.content, m.cost::bigint AS used,
           l.head_end, l.allowance
    FROM latest l
    CROSS JOIN LATERAL (SELECT m.seq, m.role, m.content,
                               greatest(1, (char_length(m.content) + 3) / 4) AS cost
                        FROM messages m
                        WHERE m.conversation_id = l.conversation_id AND m.seq = l.seq
                        LIMIT 1) AS m
    WHERE m.seq > l.head_end AND m.cost <= l.allowance
    UNION ALL
    SELECT t.conversation_id, m.seq, m.role, m.content, t.used + m.cost, t.head_end, t.allowance
    FROM tail t
    CROSS JOIN LATERAL (SELECT m.seq, m.role, m.content,
                               greatest(1, (char_length(m.content) + 3) / 4) AS cost
                        FROM messages m
                        WHERE m.conversation_id = t.conversation_id AND m.seq < t.seq
                        ORDER BY m.seq DESC LIMIT 1) AS m
    WHERE m.seq > t.head_end AND t.used + m.cost <= t.allowance
),
first_user AS (
    SELECT conversation_id, min(seq) AS seq FROM tail WHERE role = 'user' GROUP BY conversation_id
),
kept AS (
    SELECT conversation_id, seq, role, content FROM head
    UNION ALL
    SELECT t.conversation_id, t.seq, t.role, t.content
    FROM tail t JOIN first_user f USING (conversation_id)
    WHERE t.seq >= f.seq
)
SELECT l.conversation_id, l.seq AS version_seq, l.created_at AS version_at, k.role, k.content
FROM latest l
LEFT JOIN kept k USING (conversation_id)
ORDER BY l.conversation_id, k.seq
