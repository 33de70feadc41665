#!/usr/bin/env bash
# The raw ceiling of a drain, for comparison with `skipjack-bench queue`'s drain
# (BENCHMARKS.md, "The drain's work per job"):
#
#   bash bench/raw_drain.sh                 # 120,000 jobs (skipjack-bench queue's default total), 1 client
#   JOBS=50000 CLIENTS=2 bash bench/raw_drain.sh
#
# A scratch database with one minimal queue table (a primary key and the
# claim's index) and a history table, filled with JOBS jobs; then pgbench
# runs bench/raw_drain.sql (claim 500 with SKIP LOCKED and move them to
# history, one statement) from CLIENTS connections until the queue is
# empty. Prints jobs/s and, as `skipjack-bench queue` does, the work per job:
# the Postgres server's CPU (every `postgres` process in /proc, utime +
# stime; the server must run on this machine), WAL bytes, heap rows.
# Stock server settings, as for every benchmark here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ADMIN_URL=${SKIPJACK_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
JOBS=${JOBS:-120000}
CLIENTS=${CLIENTS:-1}
DB=skipjack_raw_drain
DB_URL=${ADMIN_URL%/*}/$DB
TICK=$(getconf CLK_TCK)
command -v pgbench >/dev/null || { echo "error: pgbench not found (Debian: postgresql-client or the server package)" >&2; exit 1; }

cleanup() { psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
psql "$ADMIN_URL" -qc "CREATE DATABASE $DB"
psql "$DB_URL" -q <<SQL
CREATE TABLE raw_jobs (
    id bigint PRIMARY KEY,
    priority smallint NOT NULL DEFAULT 1,
    run_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_jobs_claim ON raw_jobs (priority DESC, run_at, id);
CREATE TABLE raw_history (
    id bigint NOT NULL,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE INDEX raw_history_finished ON raw_history (finished_at);
INSERT INTO raw_jobs (id, payload) SELECT n, jsonb_build_object('n', n) FROM generate_series(1, $JOBS) n;
VACUUM ANALYZE raw_jobs;
SQL

# Every client runs until the queue is empty: enough transactions that the
# last ones find nothing, as each claims up to 500.
per_client=$(( (JOBS / 500 / CLIENTS) + 2 ))
lsn0=$(psql "$DB_URL" -Atc "SELECT pg_current_wal_lsn()")
ticks0=$(pg_ticks)
start=$(date +%s.%N)
pgbench -n -c "$CLIENTS" -j "$CLIENTS" -t "$per_client" -f bench/raw_drain.sql "$DB_URL" >/dev/null &
bench=$!
# The drain ends when the queue is empty; the clients then sleep in their
# last transactions, so their backends' CPU is still in /proc.
until [ "$(psql "$DB_URL" -Atc "SELECT NOT EXISTS (SELECT 1 FROM raw_jobs)")" = t ]; do
  kill -0 "$bench" 2>/dev/null || { wait "$bench"; echo "error: pgbench ended before the queue was empty" >&2; exit 1; }
  sleep 0.02
done
end=$(date +%s.%N)
ticks1=$(pg_ticks)
wait "$bench"
left=$(psql "$DB_URL" -Atc "SELECT count(*) FROM raw_jobs")
[ "$left" = 0 ] || { echo "error: $left jobs left in the queue" >&2; exit 1; }
wal=$(psql "$DB_URL" -Atc "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
awk -v jobs="$JOBS" -v clients="$CLIENTS" -v s="$start" -v e="$end" -v t0="$ticks0" -v t1="$ticks1" -v tick="$TICK" -v wal="$wal" 'BEGIN {
  printf "raw drain (%d jobs, %d client(s)): %.0f jobs/s\n", jobs, clients, jobs / (e - s)
  printf "  Postgres CPU per job  %8.1f µs\n", (t1 - t0) * 1e6 / tick / jobs
  printf "  WAL per job           %8.0f bytes\n", wal / jobs
}'
