-- prune_waiters: forgets waiters not refreshed for $1 seconds (their process
-- died without unregistering), so NOTIFYs stop being sent for them.
DELETE FROM queue_waiters WHERE seen_at < now() - make_interval(secs => $1)
