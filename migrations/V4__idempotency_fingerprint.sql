-- skipjack schema, version 4: an idempotency key remembers which request
-- it was first used for.
--
-- `fingerprint` is a SHA-256 of the request's canonical fields, written with
-- the key. A later submission with the same key but another fingerprint is
-- a different request reusing the key: it is refused instead of being
-- answered with the first request's job. Keys written before this version
-- have none, and match any request, as they did.
--
-- Safe on a busy table: a nullable column without a default is a catalog
-- change only (no rewrite, no scan). The short ACCESS EXCLUSIVE lock it
-- needs is not allowed to queue behind a long transaction (and block every
-- enqueue behind it): past the lock timeout the migration fails and can
-- simply be run again (it runs in a transaction of its own, and the
-- column is added only if missing). SET LOCAL: the timeouts end with it.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10s';
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS fingerprint bytea;
