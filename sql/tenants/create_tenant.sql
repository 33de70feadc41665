-- create_tenant: a new tenant. $1 id, $2 name (unique), $3 max queued jobs
-- (NULL: the API process's default).
INSERT INTO tenants (id, name, max_queued)
VALUES ($1, $2, $3)
RETURNING id
