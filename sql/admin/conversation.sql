-- conversation: one conversation by id, any tenant (the console's
-- conversation page). $1 conversation id.
SELECT id, tenant_id, user_id, is_default, created_at
FROM conversations
WHERE id = $1
