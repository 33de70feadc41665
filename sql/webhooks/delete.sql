-- delete: removes webhook $1 of tenant $2; no row when the tenant has no
-- such webhook (another tenant's id included). Its pending deliveries stay
-- queued and complete as skipped when a worker finds the webhook gone.
DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2 RETURNING id
