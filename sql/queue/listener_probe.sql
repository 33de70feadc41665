-- listener_probe: a NOTIFY on a listener's own probe channel ($1) carrying
-- $2, sent over the listener's own connection. Hearing it back proves the
-- connection alive and its LISTENs in effect; a probe not heard in time
-- means the connection is dead (even when its socket still looks open), and
-- the listener replaces it.
SELECT pg_notify($1, $2)
