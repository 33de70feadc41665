-- transactions: transactions committed or rolled back in this database
-- (statements outside a transaction block count one each).
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()
