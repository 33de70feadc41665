-- list: tenant $1's webhooks, oldest first, without their secrets.
SELECT id, url, events, created_at
FROM webhooks
WHERE tenant_id = $1
ORDER BY created_at, id
