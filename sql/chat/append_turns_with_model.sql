-- append_turns_with_model: append_turns.sql, also recording the model that
-- wrote each assistant reply (schema version 6, messages.model). The
-- statement of processes running at schema 6 or newer.
--
-- append_turns: appends, for each completed chat job, the user turn and the
-- assistant turn to its conversation, after the conversation's last message,
-- and returns each conversation's history version before and after (the seq
-- and created_at of its last message), which the history cache uses to tell
-- a current cached history from a stale one.
--
-- $1 conversation ids uuid[], $2 job ids uuid[], $3 user messages text[],
-- $4 assistant replies text[], $5 user tokens integer[], $6 assistant tokens
-- integer[], $7 the models that wrote the replies text[]. Runs in the
-- transaction that completes the jobs, so a turn is appended exactly when
-- its job completes under a valid lease. Jobs of one conversation run one
-- at a time, so a batch holds at most one turn per conversation and no
-- other writer appends to it meanwhile; the primary key (conversation_id,
-- seq) would reject a second writer anyway.
WITH turn AS (
    SELECT t.*, last.seq AS prev_seq, last.created_at AS prev_created_at
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[], $6::integer[],
                $7::text[])
         AS t (conversation_id, job_id, user_content, assistant_content, user_tokens, assistant_tokens,
               model)
    LEFT JOIN LATERAL (SELECT m.seq, m.created_at FROM messages m
                       WHERE m.conversation_id = t.conversation_id
                       ORDER BY m.seq DESC LIMIT 1) AS last ON true
),
inserted AS (
    INSERT INTO messages (conversation_id, seq, role, content, job_id, tokens, model)
    SELECT conversation_id, coalesce(prev_seq, 0) + 1, 'user', user_content, job_id, user_tokens,
           NULL
    FROM turn
    UNION ALL
    SELECT conversation_id, coalesce(prev_seq, 0) + 2, 'assistant', assistant_content, job_id,
           assistant_tokens, model
    FROM turn
    RETURNING conversation_id, seq, role, created_at
)
SELECT t.conversation_id, t.prev_seq, t.prev_created_at, i.seq, i.created_at
FROM turn t
JOIN inserted i ON i.conversation_id = t.conversation_id AND i.role = 'assistant'
