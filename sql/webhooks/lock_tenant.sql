-- lock_tenant: serialises the webhook creations of tenant $1 (run first in
-- the creating transaction), so that the count in create.sql is exact.
-- FOR NO KEY UPDATE does not conflict with the key-share locks that
-- inserts referencing the tenant take: enqueues are not held up.
SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE
