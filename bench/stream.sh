#!/usr/bin/env bash
# The streaming benchmark: what following replies as event streams
# (docs/streaming.md) costs, against long-polling, on the same server.
#
#   bash bench/stream.sh
#   USERS=500 DURATION=30s bash bench/stream.sh
#
# A scratch database, one `api` and one `worker` (release build, built if
# missing) with the simulated provider at 2,000 ms, no jitter, 40 chunks a
# reply; then `loadgen steady` with 1,000 users for 60 s (think 3 s ± 1 s)
# twice: first with --stream (submit with "stream": true, read
# GET /v1/chat/{id}/stream), then without (long-poll GET /v1/chat/{id}).
# Each run prints loadgen's report (stream numbers, the generator's own CPU
# per turn) and the Postgres server's CPU per finished turn:
#
#   sum over every process named `postgres` (/proc/PID/comm) of
#   utime + stime (/proc/PID/stat, clock ticks → µs), after the run minus
#   before it, divided by the turns that finished in between (rows added
#   to job_history).
#
# A process is counted by its own difference: one started during the run
# counts from zero; one that exited during the run is not counted at all
# (its CPU left with it). The api's and the worker's pools keep their
# backends for the whole run, so the server work the runs cause is counted,
# except a backend that was closed and reopened mid-run (pool idle
# timeouts), whose part before it closed is lost. The server's background
# processes (checkpointer, WAL writer, autovacuum) are counted too, and so
# are other clients' backends: run it on an otherwise quiet server. The
# part of the benchmark database's own backends (process title
# `postgres: USER DATABASE …`) is printed beside it.
#
# At the end both runs side by side, and streaming / long-poll ratios.
#
# Settings (environment): USERS [1000], DURATION [60s], THINK [3s],
# THINK_JITTER [1s], LATENCY_MS [2000], CHUNKS [40], CONCURRENCY (worker
# slots) [1000], REPORT_DIR [reports/stream-bench-<timestamp>],
# SKIPJACK_BENCH_ADMIN_URL (default the local server as postgres).
# Needs the Postgres server on this machine (its /proc) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${SKIPJACK_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
USERS=${USERS:-1000}
DURATION=${DURATION:-60s}
THINK=${THINK:-3s}
THINK_JITTER=${THINK_JITTER:-1s}
LATENCY_MS=${LATENCY_MS:-2000}
CHUNKS=${CHUNKS:-40}
CONCURRENCY=${CONCURRENCY:-1000}
STAMP=$(date -u +%Y%m%d-%H%M%S)
REPORT_DIR=${REPORT_DIR:-reports/stream-bench-$STAMP}
DB=skipjack_stream_bench_$$
DB_URL=${ADMIN_URL%/*}/$DB
BIN=${CARGO_TARGET_DIR:-target}/release
TICK=$(getconf CLK_TCK)

# 1,000 users hold 1,000 connections, on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for b in api worker skipjack loadgen; do
  [ -x "$BIN/$b" ] || { cargo build --release --workspace --bin api --bin worker --bin skipjack --bin loadgen; break; }
done
mkdir -p "$REPORT_DIR"

# A free port for the API, and the next one for the worker's health server.
# Below Linux's ephemeral range (32768 and up), where the processes' own
# outgoing connections could already hold the port when it is bound.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=$((20000 + RANDOM % 12000))
for _ in $(seq 50); do
  port_free "$PORT" && port_free $((PORT + 1)) && break
  PORT=$((20000 + RANDOM % 12000))
done

PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  echo "reports: $REPORT_DIR" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$ADMIN_URL" -qc "CREATE DATABASE \"$DB\""
DATABASE_URL=$DB_URL "$BIN/skipjack" migrate 2>>"$REPORT_DIR/setup.log"
KEY=$(DATABASE_URL=$DB_URL "$BIN/skipjack" tenants create stream-bench 2>>"$REPORT_DIR/setup.log")

export DATABASE_URL=$DB_URL SKIPJACK_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn} SKIPJACK_SHUTDOWN_GRACE_SECONDS=5
SKIPJACK_API_ADDR=127.0.0.1:$PORT SKIPJACK_MAX_QUEUE_DEPTH=100000000 SKIPJACK_MAX_TENANT_QUEUE_DEPTH=100000000 \
  "$BIN/api" >"$REPORT_DIR/api.log" 2>&1 &
PIDS+=($!)
SKIPJACK_WORKER_ADDR=127.0.0.1:$((PORT + 1)) SKIPJACK_CONCURRENCY=$CONCURRENCY \
  SKIPJACK_SIMULATED_LATENCY_MS=$LATENCY_MS SKIPJACK_SIMULATED_JITTER_MS=0 \
  SKIPJACK_SIMULATED_CHUNKS=$CHUNKS SKIPJACK_SIMULATED_FAILURE_RATE=0 \
  "$BIN/worker" >"$REPORT_DIR/worker.log" 2>&1 &
PIDS+=($!)
for p in "$PORT" $((PORT + 1)); do
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$p/ready" >/dev/null && break
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$p/ready" >/dev/null || { echo "error: 127.0.0.1:$p did not become ready (logs in $REPORT_DIR)" >&2; exit 2; }
done

# One line per process named postgres: PID, utime + stime in ticks, and
# 1 when its title names the benchmark database (a backend of this run's
# api or worker), else 0.
pg_cpu() {
  local d comm stat title
  for d in /proc/[0-9]*; do
    comm=$(cat "$d/comm" 2>/dev/null) || continue
    [ "$comm" = postgres ] || continue
    stat=$(cat "$d/stat" 2>/dev/null) || continue
    title=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || title=
    # Fields after the command name's ')': utime and stime are the 12th
    # and 13th (fields 14 and 15 of the line).
    echo "${d#/proc/} $(awk '{print $12 + $13}' <<<"${stat##*)}") $([[ " $title " == *" $DB "* ]] && echo 1 || echo 0)"
  done
}

# Prints "TOTAL_US OWN_US PROCESSES" for two pg_cpu snapshots: each
# process after minus before (0 when new), exited ones left out.
pg_cpu_delta() {
  awk -v tick="$TICK" '
    NR == FNR { before[$1] = $2; next }
    { d = $2 - ($1 in before ? before[$1] : 0); total += d; if ($3) own += d; n++ }
    END { printf "%.0f %.0f %d\n", total * 1e6 / tick, own * 1e6 / tick, n }' "$1" "$2"
}

finished_turns() { psql "$DB_URL" -Atc "SELECT count(*) FROM job_history"; }

[ -n "$(pg_cpu)" ] || echo "warning: no process named postgres in /proc: the server is elsewhere, its CPU is not measured" >&2

# run NAME [LOADGEN FLAGS...]: one loadgen run; leaves "NAME TURNS PG_US
# PG_OWN_US" in $REPORT_DIR/results.
run() {
  local name=$1 status turns0 turns1 delta total own procs
  shift
  echo "== $name: $USERS users, $DURATION, think $THINK ± $THINK_JITTER, simulated $LATENCY_MS ms in $CHUNKS chunks"
  pg_cpu >"$REPORT_DIR/$name.pg-before"
  turns0=$(finished_turns)
  set +e
  SKIPJACK_API_KEY=$KEY "$BIN/loadgen" --url "http://127.0.0.1:$PORT" --scenario "stream-bench-$name" \
    --report-dir "$REPORT_DIR/$name" --expected-latency-ms "$LATENCY_MS" --expected-chunks "$CHUNKS" \
    --think "$THINK" --think-jitter "$THINK_JITTER" --progress-every 10s "$@" \
    steady --users "$USERS" --duration "$DURATION"
  status=$?
  set -e
  pg_cpu >"$REPORT_DIR/$name.pg-after"
  turns1=$(finished_turns)
  delta=$(pg_cpu_delta "$REPORT_DIR/$name.pg-before" "$REPORT_DIR/$name.pg-after")
  read -r total own procs <<<"$delta"
  local turns=$((turns1 - turns0))
  echo "postgres CPU: $(awk -v t="$total" -v o="$own" -v n="$turns" -v p="$procs" 'BEGIN {
    printf "%.2f s (%.2f s in the benchmark database'"'"'s backends) over %d processes; ", t / 1e6, o / 1e6, p
    if (n > 0) printf "%.0f µs per finished turn (%.0f µs own), %d turns", t / n, o / n, n
    else printf "no turn finished" }')"
  echo "loadgen exit status $status"
  echo "$name $turns $total $own" >>"$REPORT_DIR/results"
}

: >"$REPORT_DIR/results"
run streaming --stream
# The second run's users are new (a fresh run id), its conversations too.
run long-poll

echo "== side by side"
awk '
  { turns[$1] = $2; total[$1] = $3; own[$1] = $4 }
  function per(us, n) { return n > 0 ? us / n : 0 }
  END {
    s = "streaming"; l = "long-poll"
    printf "%-28s %14s %14s %8s\n", "", s, l, "ratio"
    ps = per(total[s], turns[s]); pl = per(total[l], turns[l])
    os = per(own[s], turns[s]); ol = per(own[l], turns[l])
    printf "%-28s %14d %14d %8s\n", "turns finished", turns[s], turns[l], turns[l] ? sprintf("%.2f", turns[s] / turns[l]) : "-"
    printf "%-28s %14.0f %14.0f %8s\n", "postgres CPU us / turn", ps, pl, pl ? sprintf("%.2f", ps / pl) : "-"
    printf "%-28s %14.0f %14.0f %8s\n", "  of which own backends", os, ol, ol ? sprintf("%.2f", os / ol) : "-"
  }' "$REPORT_DIR/results"
for name in streaming long-poll; do
  grep -h "^loadgen CPU" "$REPORT_DIR/$name/summary.txt" 2>/dev/null | sed "s/^/$name: /" || true
done
