-- idempotency_lookup: the jobs that own the given idempotency keys, with the
-- request fingerprints stored with the keys.
--
-- $1 tenant ids uuid[] (NULL for no tenant), $2 keys text[]. Run as a
-- statement of its own after enqueue, so its snapshot sees keys committed by
-- concurrent enqueues that enqueue.sql waited for but could not see.
SELECT i.ord, k.job_id, k.fingerprint
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS i (tenant_id, key, ord)
JOIN idempotency_keys k
  ON k.tenant_id = coalesce(i.tenant_id, '00000000-0000-0000-0000-000000000000')
 AND k.key = i.key
