-- queued_by_tenant: queued jobs per tenant (NULL: jobs of no tenant), for
-- the API's admission control. One grouped query over the live `jobs` table,
-- run a few times a second per API process, never per request: `jobs` holds
-- only live jobs (finished ones move to job_history), so the scan stays as
-- small as the backlog the limits allow. Webhook deliveries are left out:
-- they are the system's work, not the tenant's submissions, and a
-- receiver that is down (its deliveries waiting out their backoff) must
-- not make the tenant's chat turns 429.
SELECT tenant_id, count(*) AS queued
FROM jobs
WHERE state = 'queued' AND kind <> 'webhook'
GROUP BY tenant_id
