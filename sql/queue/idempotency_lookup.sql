-- idempotency_lookup: the jobs that own the given idempotency keys, with the
-- request fingerprints stored with the keys.
--
-- $1 tenant ids uuid[] (NULL for no tenant), $2 keys text[]. Run as a
-- statement of its own after enqueue, so its snapshot sees keys committed by
-- concurrent enqueues that enqueue.sql waited for but could not see.
-- Each key is probed by a LATERAL subquery with a LIMIT, so no plan can
-- turn it into a scan of the table (see sql/chat/histories.sql).
SELECT i.ord, k.job_id, k.fingerprint
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS i (tenant_id, key, ord)
CROSS JOIN LATERAL (SELECT k.job_id, k.fingerprint
                    FROM idempotency_keys k
                    WHERE k.tenant_id = coalesce(i.tenant_id, '00000000-0000-0000-0000-000000000000')
                      AND k.key = i.key
                    LIMIT 1) AS k
