-- waiter_unregister: $2 no longer waits on channel $1.
DELETE FROM queue_waiters WHERE channel = $1 AND waiter = $2
