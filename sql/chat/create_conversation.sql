-- create_conversation: a new, non-default conversation. $1 id, $2 tenant,
-- $3 user id.
INSERT INTO conversations (id, tenant_id, user_id)
VALUES ($1, $2, $3)
RETURNING id, user_id, created_at
