-- conversation_user: the user a conversation belongs to, if it belongs to
-- tenant $2. $1 conversation id. No row: no such conversation for this
-- tenant (another tenant's conversation is indistinguishable from none).
SELECT user_id FROM conversations WHERE id = $1 AND tenant_id = $2
