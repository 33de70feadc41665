-- listener_probe: a NOTIFY on the completions channel ($1) carrying $2, a
-- payload that is not a job id. An API process sends it to itself until its
-- listener receives it: from then on, LISTEN is known to be in effect, and no
-- completion can slip by unnoticed. Other listeners on the channel ignore it.
SELECT pg_notify($1, $2)
