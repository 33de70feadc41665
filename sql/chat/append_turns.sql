-- append_turns: appends, for each completed chat job, the user turn and the
-- assistant turn to its conversation, after the conversation's last message.
--
-- $1 conversation ids uuid[], $2 job ids uuid[], $3 user messages text[],
-- $4 assistant replies text[], $5 user tokens integer[], $6 assistant tokens
-- integer[]. Runs in the transaction that completes the jobs, so a turn is
-- appended exactly when its job completes under a valid lease. Jobs of one
-- conversation run one at a time, so a batch holds at most one turn per
-- conversation and no other writer appends to it meanwhile; the primary key
-- (conversation_id, seq) would reject a second writer anyway.
WITH turn AS (
    SELECT t.*, coalesce((SELECT max(m.seq) FROM messages m
                          WHERE m.conversation_id = t.conversation_id), 0) AS last_seq
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[], $6::integer[])
         AS t (conversation_id, job_id, user_content, assistant_content, user_tokens, assistant_tokens)
)
INSERT INTO messages (conversation_id, seq, role, content, job_id, tokens)
SELECT conversation_id, last_seq + 1, 'user', user_content, job_id, user_tokens FROM turn
UNION ALL
SELECT conversation_id, last_seq + 2, 'assistant', assistant_content, job_id, assistant_tokens FROM turn
