//! The tools' statements, one per file under `tools/sql/`, compiled in.
//! They read what skipjack documents for reading with SQL (`job_history`,
//! Postgres's statistics views) and, for `skipjack-bench console`, fill a
//! scratch database with history no API could write (jobs finished days
//! ago).

macro_rules! statements {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub const $name: &str = include_str!(concat!("../sql/", $file));
        )*
    };
}

statements! {
    CHAT_REPORT => "chat_report.sql",
    FINISHED_JOBS => "finished_jobs.sql",
    WAL_LSN => "wal_lsn.sql",
    WAL_DIFF => "wal_diff.sql",
    CLEAR_STATS_SNAPSHOT => "clear_stats_snapshot.sql",
    TABLE_STATS => "table_stats.sql",
    CONSOLE_PARTITIONS => "console/partitions.sql",
    CONSOLE_FILL_HISTORY => "console/fill_history.sql",
    CONSOLE_FILL_QUEUED => "console/fill_queued.sql",
    CONSOLE_SAMPLE_IDS => "console/sample_ids.sql",
}
