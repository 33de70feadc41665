-- waiter_register: records that $2 waits on channel $1 (or refreshes it), so
-- statements that make work for it send a NOTIFY.
INSERT INTO queue_waiters (channel, waiter)
VALUES ($1, $2)
ON CONFLICT (channel, waiter) DO UPDATE SET seen_at = now()
