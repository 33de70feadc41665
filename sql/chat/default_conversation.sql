-- default_conversation: the user's default conversation, created on first
-- use. $1 new id, $2 tenant, $3 user id.
--
-- Reads first, so the common case writes nothing. Concurrent first messages
-- all try the insert; the partial unique index admits one, and the others
-- get no row (the winner is invisible to their snapshot): the caller runs
-- the statement again, and the fresh snapshot finds the winner's row.
WITH existing AS (
    SELECT id FROM conversations
    WHERE tenant_id = $2 AND user_id = $3 AND is_default
),
inserted AS (
    INSERT INTO conversations (id, tenant_id, user_id, is_default)
    SELECT $1, $2, $3, true
    WHERE NOT EXISTS (SELECT 1 FROM existing)
    ON CONFLICT (tenant_id, user_id) WHERE is_default DO NOTHING
    RETURNING id
)
SELECT id FROM existing
UNION ALL
SELECT id FROM inserted
