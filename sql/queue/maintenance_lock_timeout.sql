-- maintenance_lock_timeout: sets lock_timeout to $1 milliseconds for the
-- rest of the current transaction, so a maintenance step that cannot get its
-- locks gives up instead of queueing every later request behind its own.
SELECT set_config('lock_timeout', $1::bigint || 'ms', true)
