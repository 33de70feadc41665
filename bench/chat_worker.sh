#!/usr/bin/env bash
# The chat worker benchmark, both ways (see BENCHMARKS.md, "Chat worker"):
#
#   bash bench/chat_worker.sh           # in-process run, then the worker binary
#   RUNS=3 bash bench/chat_worker.sh    # the in-process run three times
#
# 1. `chat-bench`: one Worker in the benchmark process (10,000 chat turns over
#    1,000 conversations, 1,000 slots, simulated latency 2,000 ms, no jitter)
#    in a scratch database; prints jobs/s, overhead, handoff, peak RSS.
# 2. The real `worker` binary on the same backlog (enqueued by
#    `chat-bench --enqueue-only`), measured from outside: jobs/s from
#    job_history, overhead from tools/sql/chat_report.sql, peak RSS from
#    /proc/PID/status (VmHWM) just before SIGTERM.
#
# Needs Postgres (SKIPJACK_BENCH_ADMIN_URL, default the local server as
# postgres) and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${SKIPJACK_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=skipjack_chat_worker_bench
DB_URL=${ADMIN_URL%/*}/$DB
RUNS=${RUNS:-1}  # 0: only the worker binary
LATENCY_MS=${LATENCY_MS:-2000}
[ -x target/release/chat-bench ] && [ -x target/release/worker ] || cargo build --release --workspace --bin chat-bench --bin worker

for _ in $(seq "$RUNS"); do
    DATABASE_URL=$ADMIN_URL RUST_LOG=warn target/release/chat-bench --latency-ms "$LATENCY_MS"
done

DATABASE_URL=$ADMIN_URL RUST_LOG=warn target/release/chat-bench --enqueue-only --bench-database "$DB"
DATABASE_URL=$DB_URL SKIPJACK_CONCURRENCY=1000 SKIPJACK_SIMULATED_LATENCY_MS=$LATENCY_MS \
    SKIPJACK_SIMULATED_JITTER_MS=0 SKIPJACK_WORKER_ADDR=127.0.0.1:18080 RUST_LOG=warn \
    target/release/worker &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
while [ "$(psql "$DB_URL" -Atc 'SELECT count(*) FROM jobs')" != 0 ]; do sleep 0.5; done
HWM=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
kill -TERM "$PID"
wait "$PID" || true
trap - EXIT
echo "worker binary: 10,000 turns, peak RSS $((HWM / 1024)) MB"
psql "$DB_URL" -At -F ' ' -c "SELECT count(*), round((count(*) / extract(epoch FROM max(finished_at) - min(started_at)))::numeric, 1) FROM job_history WHERE state = 'completed'" |
    awk '{print "completed " $1 ", " $2 " jobs/s (first claim to last completion)"}'
sed "s/\\\$1/$LATENCY_MS \/ 1000.0/" tools/sql/chat_report.sql |
    psql "$DB_URL" -At -F ' ' |
    awk '{printf "overhead p50 %.1f ms, p99 %.1f ms, max %.1f ms; handoff p50 %.1f ms, p99 %.1f ms; %d completion transactions\n", $3*1000, $4*1000, $5*1000, $6*1000, $7*1000, $8}'
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
