//! The queue's statements, one per file under `sql/queue/`, compiled in.

macro_rules! statements {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub const $name: &str = include_str!(concat!("../../sql/queue/", $file));
        )*
    };
}

statements! {
    ENQUEUE => "enqueue.sql",
    ENQUEUE_SIMPLE => "enqueue_simple.sql",
    IDEMPOTENCY_LOOKUP => "idempotency_lookup.sql",
    CLAIM => "claim.sql",
    CLAIM_STRICT => "claim_strict.sql",
    AGE => "age.sql",
    SWEEP_QUEUES => "sweep_queues.sql",
    FINISH => "finish.sql",
    UNBLOCK => "unblock.sql",
    LOCK_LANE => "lock_lane.sql",
    CANCEL => "cancel.sql",
    LOCK_RUNNING => "lock_running.sql",
    LOCK_JOB_NOWAIT => "lock_job_nowait.sql",
    LOCK_LANE_FINISHED => "lock_lane_finished.sql",
    RETRY => "retry.sql",
    LIST => "list.sql",
    HEARTBEAT => "heartbeat.sql",
    RESCUE => "rescue.sql",
    RELEASE => "release.sql",
    GET => "get.sql",
    EVENTS => "events.sql",
    STATS => "stats.sql",
    STATS_STRICT => "stats_strict.sql",
    HAS_LIVE_JOBS => "has_live_jobs.sql",
    HAS_LIVE_JOBS_OF_TENANT => "has_live_jobs_of_tenant.sql",
    GAUGES_LEAD => "gauges_lead.sql",
    WAITER_REGISTER => "waiter_register.sql",
    WAITER_UNREGISTER => "waiter_unregister.sql",
    WAITER_RECHECK => "waiter_recheck.sql",
    LISTENER_PROBE => "listener_probe.sql",
    PRUNE_WAITERS => "prune_waiters.sql",
    MISSING_PARTITIONS => "missing_partitions.sql",
    EXPIRED_PARTITIONS => "expired_partitions.sql",
    CREATE_PARTITION => "create_partition.sql",
    DROP_PARTITION => "drop_partition.sql",
    MAINTENANCE_LOCK_TIMEOUT => "maintenance_lock_timeout.sql",
    PRUNE_HISTORY_DEFAULT => "prune_history_default.sql",
    PRUNE_CONVERSATION_QUEUES => "prune_conversation_queues.sql",
    PRUNE_IDEMPOTENCY_KEYS => "prune_idempotency_keys.sql",
    PRUNE_EVENTS => "prune_events.sql",
    DEAD_TUPLES => "dead_tuples.sql",
    VACUUM_JOBS => "vacuum_jobs.sql",
    VACUUM_LOCK => "vacuum_lock.sql",
}
