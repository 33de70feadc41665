//! The tools' statements, one per file under `tools/sql/`, compiled in
//! with the library's `sql_files!`.
//! They read what skipjack documents for reading with SQL (`job_history`,
//! Postgres's statistics views) and, for `skipjack-bench console`, fill a
//! scratch database with history no API could write (jobs finished days
//! ago).

skipjack::sql_files!("bench" {
    CHAT_REPORT => "chat_report.sql",
    FINISHED_JOBS => "finished_jobs.sql",
    WAL_LSN => "wal_lsn.sql",
    WAL_DIFF => "wal_diff.sql",
    CLEAR_STATS_SNAPSHOT => "clear_stats_snapshot.sql",
    TABLE_STATS => "table_stats.sql",
    TRANSACTIONS => "transactions.sql",
    DEAD_ROWS => "dead_rows.sql",
});

skipjack::sql_files!("console" {
    CONSOLE_PARTITIONS => "partitions.sql",
    CONSOLE_FILL_HISTORY => "fill_history.sql",
    CONSOLE_FILL_QUEUED => "fill_queued.sql",
    CONSOLE_SAMPLE_IDS => "sample_ids.sql",
});
