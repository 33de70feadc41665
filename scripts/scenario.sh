#!/usr/bin/env bash
# Runs a named load scenario end to end and leaves its report:
#
#   scripts/scenario.sh black-friday            # 100 users, spike to 1,000, 2 s LLM
#   scripts/scenario.sh black-friday --workers 2
#   scripts/scenario.sh black-friday --stream --chunks 40   # replies as event streams
#   scripts/scenario.sh overload                # far beyond capacity, low queue limit
#   scripts/scenario.sh soak                    # 30 min at about half of capacity
#   scripts/scenario.sh steady --users 50 --duration 2m -- --turns 10
#
# Steps: make sure Postgres answers (starting the local cluster if needed),
# create a fresh database, migrate it, create a tenant and its key, start
# the API and W worker processes (release build) with the simulated LLM,
# run `loadgen` with the scenario's profile, record the database's sizes
# (pg_total_relation_size of jobs, job_history, messages), and tear it all
# down (also on failure or Ctrl-C): processes stopped, database dropped.
# The report (summary.txt, report.json, chart.svg, plus db.json, the
# processes' logs, machine.txt and top.txt) stays in the report directory.
# summary.txt ends with the CPU per finished turn of the API, the workers,
# every postgres process on this machine and loadgen; db.json has the rows
# each table's sequential scans read.
# Exits with loadgen's status: 0 passed, 1 problems found, 2 could not run.
#
# Options (each also an environment variable, shown in brackets):
#   --workers N          worker processes [WORKERS]
#   --concurrency N      jobs in flight per worker [CONCURRENCY]
#   --latency MS         simulated LLM latency [LATENCY_MS]
#   --jitter MS          simulated latency spread, ± [JITTER_MS]
#   --failure-rate R     simulated failure probability [FAILURE_RATE]
#   --users N            users (before/after the spike) [USERS]
#   --peak N             users during the spike [PEAK]
#   --at D --hold D --after D   spike timing [SPIKE_AT SPIKE_HOLD SPIKE_AFTER]
#   --duration D         steady/soak/ramp duration [DURATION]
#   --think D            mean think time [THINK]; --think-jitter D [THINK_JITTER]
#   --max-queue-depth N  API's SKIPJACK_MAX_QUEUE_DEPTH [MAX_QUEUE_DEPTH]
#   --stream             users submit with "stream": true and follow each turn
#                        over GET /v1/chat/{id}/stream (loadgen --stream,
#                        docs/streaming.md) [STREAM=1]
#   --chunks N           simulated provider's chunks per reply
#                        (SKIPJACK_SIMULATED_CHUNKS, also loadgen's
#                        --expected-chunks) [CHUNKS; default the provider's]
#   --vacuum-every D     run VACUUM (ANALYZE) on the churning tables (jobs,
#                        conversation_queues) this often, for a server with
#                        autovacuum off [VACUUM_EVERY; default none]
#   --report-dir DIR     default reports/<scenario>-<timestamp> [REPORT_DIR]
#   --no-build           use the existing release binaries ($CARGO_TARGET_DIR/release)
#   --keep-db            do not drop the database at the end
#   -- ARGS              passed to loadgen as they are
# The API and workers inherit the environment: e.g.
# `SKIPJACK_FAIR_ADMISSION=false scripts/scenario.sh overload` runs the API
# without its admission line (recorded in scenario.env).
# Durations: 90s, 5m, 500ms. The Postgres server is the one
# SKIPJACK_SCENARIO_ADMIN_URL names (default the local server as postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
scenario="$1"
shift

# Scenario defaults (environment first, then the scenario's own).
case "$scenario" in
  black-friday)
    profile=spike
    : "${WORKERS:=1}" "${CONCURRENCY:=1000}" "${LATENCY_MS:=2000}" "${JITTER_MS:=0}"
    : "${USERS:=100}" "${PEAK:=1000}" "${SPIKE_AT:=60s}" "${SPIKE_HOLD:=120s}" "${SPIKE_AFTER:=60s}"
    : "${THINK:=3s}" "${THINK_JITTER:=1s}" ;;
  overload)
    # Capacity: 1 worker × 50 slots / 1 s = 50 turns/s. Demand: 1,000 users
    # thinking 0.5 s, i.e. hundreds of turns a second. The queue is capped
    # at 100, so most submissions are refused with 429 at once.
    profile=steady
    : "${WORKERS:=1}" "${CONCURRENCY:=50}" "${LATENCY_MS:=1000}" "${JITTER_MS:=0}"
    : "${USERS:=1000}" "${DURATION:=60s}" "${THINK:=500ms}" "${THINK_JITTER:=250ms}"
    : "${MAX_QUEUE_DEPTH:=100}" ;;
  soak)
    # Capacity: 1 worker × 200 slots / 2 s = 100 turns/s; 250 users
    # thinking 3 s ask for 250 / 5 s = 50 turns/s, half of it.
    profile=soak
    : "${WORKERS:=1}" "${CONCURRENCY:=200}" "${LATENCY_MS:=2000}" "${JITTER_MS:=0}"
    : "${USERS:=250}" "${DURATION:=30m}" "${THINK:=3s}" "${THINK_JITTER:=1s}"
    : "${REPORT_EVERY:=5m}" ;;
  steady|ramp|spike)
    profile="$scenario" ;;
  -h|--help|help) usage ;;
  *) echo "error: unknown scenario $scenario (black-friday, overload, soak, steady, ramp, spike)" >&2; exit 2 ;;
esac
: "${WORKERS:=1}" "${CONCURRENCY:=100}" "${LATENCY_MS:=500}" "${FAILURE_RATE:=0}"
: "${USERS:=100}" "${PEAK:=1000}" "${DURATION:=60s}" "${THINK:=3s}" "${THINK_JITTER:=1s}"
: "${SPIKE_AT:=60s}" "${SPIKE_HOLD:=120s}" "${SPIKE_AFTER:=60s}" "${REPORT_EVERY:=5m}"
: "${MAX_QUEUE_DEPTH:=100000}"
build=1
keep_db=0
loadgen_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --latency) LATENCY_MS="$2"; shift 2 ;;
    --jitter) JITTER_MS="$2"; shift 2 ;;
    --failure-rate) FAILURE_RATE="$2"; shift 2 ;;
    --users) USERS="$2"; shift 2 ;;
    --peak) PEAK="$2"; shift 2 ;;
    --at) SPIKE_AT="$2"; shift 2 ;;
    --hold) SPIKE_HOLD="$2"; shift 2 ;;
    --after) SPIKE_AFTER="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --think) THINK="$2"; shift 2 ;;
    --think-jitter) THINK_JITTER="$2"; shift 2 ;;
    --max-queue-depth) MAX_QUEUE_DEPTH="$2"; shift 2 ;;
    --stream) STREAM=1; shift ;;
    --chunks) CHUNKS="$2"; shift 2 ;;
    --report-dir) REPORT_DIR="$2"; shift 2 ;;
    --vacuum-every) VACUUM_EVERY="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep-db) keep_db=1; shift ;;
    --) shift; loadgen_args+=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
done

: "${JITTER_MS:=$((LATENCY_MS / 2))}"
if [ "${STREAM:-0}" = 1 ]; then
  loadgen_args=(--stream "${loadgen_args[@]}")
fi
# The workers' simulated provider and loadgen (--expected-chunks) both read it.
if [ -n "${CHUNKS:-}" ]; then
  export SKIPJACK_SIMULATED_CHUNKS="$CHUNKS"
fi

case "$profile" in
  spike) profile_args=(spike --users "$USERS" --peak "$PEAK" --at "$SPIKE_AT" --hold "$SPIKE_HOLD" --after "$SPIKE_AFTER") ;;
  soak) profile_args=(soak --users "$USERS" --duration "$DURATION" --report-every "$REPORT_EVERY") ;;
  ramp) profile_args=(ramp --from "$USERS" --to "$PEAK" --duration "$DURATION") ;;
  *) profile_args=(steady --users "$USERS" --duration "$DURATION") ;;
esac

stamp="$(date -u +%Y%m%d-%H%M%S)"
dir="${REPORT_DIR:-reports/$scenario-$stamp}"
mkdir -p "$dir"
admin="${SKIPJACK_SCENARIO_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="skipjack_scenario_${scenario//-/_}_${stamp//-/_}_$$"
export DATABASE_URL="${admin%/*}/$db"
bin="${CARGO_TARGET_DIR:-target}/release"

# 1,000 users hold 1,000 connections, on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A free port for the API, and the next W for the workers' health servers.
# Below Linux's ephemeral range (32768 and up), where the processes' own
# outgoing connections could already hold the port when it is bound.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=$((20000 + RANDOM % 12000))
for _ in $(seq 50); do
  ok=1
  for p in $(seq "$port" $((port + WORKERS))); do port_free "$p" || ok=0; done
  [ "$ok" = 1 ] && break
  port=$((20000 + RANDOM % 12000))
done

pids=()
sampler_pid=""
db_created=0
teardown() {
  local status=$?
  trap - EXIT INT TERM
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  if [ ${#pids[@]} -gt 0 ]; then
    ps -o pid,comm,time,rss -p "$(IFS=,; echo "${pids[*]}")" >"$dir/processes.txt" 2>/dev/null || true
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ "$db_created" = 1 ] && [ "$keep_db" = 0 ]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  elif [ "$db_created" = 1 ]; then
    echo "database kept: $db" >&2
  fi
  echo "report: $dir" >&2
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

{
  echo "scenario $scenario at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "nproc $(nproc); uptime before: $(uptime)"
  echo "busiest processes before the run:"
  ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -8
} >"$dir/machine.txt"
cat >"$dir/scenario.env" <<ENV
SCENARIO=$scenario
PROFILE=$profile
WORKERS=$WORKERS
CONCURRENCY=$CONCURRENCY
LATENCY_MS=$LATENCY_MS
JITTER_MS=$JITTER_MS
FAILURE_RATE=$FAILURE_RATE
USERS=$USERS
PEAK=$PEAK
SPIKE_AT=$SPIKE_AT
SPIKE_HOLD=$SPIKE_HOLD
SPIKE_AFTER=$SPIKE_AFTER
DURATION=$DURATION
THINK=$THINK
THINK_JITTER=$THINK_JITTER
MAX_QUEUE_DEPTH=$MAX_QUEUE_DEPTH
STREAM=${STREAM:-0}
CHUNKS=${CHUNKS:-}
LOADGEN_ARGS=${loadgen_args[*]:-}
VACUUM_EVERY=${VACUUM_EVERY:-}
SKIPJACK_FAIR_ADMISSION=${SKIPJACK_FAIR_ADMISSION:-true}
ENV

ensure_postgres "$admin"
autovacuum="$(psql "$admin" -Atc "SHOW autovacuum")"
echo "server: autovacuum $autovacuum, fsync $(psql "$admin" -Atc "SHOW fsync"), synchronous_commit $(psql "$admin" -Atc "SHOW synchronous_commit")" >>"$dir/machine.txt"
if [ "$autovacuum" != on ] && [ -z "${VACUUM_EVERY:-}" ]; then
  echo "warning: autovacuum is off on this server: the jobs table will fill with dead tuples (see --vacuum-every)" >&2
fi
if [ "$build" = 1 ]; then
  cargo build --release --workspace --bin api --bin worker --bin skipjack --bin loadgen
fi
psql "$admin" -qc "CREATE DATABASE \"$db\""
db_created=1
"$bin/skipjack" migrate 2>>"$dir/setup.log"
key="$("$bin/skipjack" tenants create "loadgen-$scenario" 2>>"$dir/setup.log")"

export SKIPJACK_LOG_FORMAT=json RUST_LOG="${RUST_LOG:-info}" SKIPJACK_SHUTDOWN_GRACE_SECONDS=5
SKIPJACK_API_ADDR="127.0.0.1:$port" SKIPJACK_MAX_QUEUE_DEPTH="$MAX_QUEUE_DEPTH" \
  "$bin/api" >"$dir/api.log" 2>&1 &
pids+=($!)
for i in $(seq 1 "$WORKERS"); do
  SKIPJACK_WORKER_ADDR="127.0.0.1:$((port + i))" SKIPJACK_CONCURRENCY="$CONCURRENCY" \
    SKIPJACK_SIMULATED_LATENCY_MS="$LATENCY_MS" SKIPJACK_SIMULATED_JITTER_MS="$JITTER_MS" \
    SKIPJACK_SIMULATED_FAILURE_RATE="$FAILURE_RATE" \
    "$bin/worker" >"$dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
for p in $(seq "$port" $((port + WORKERS))); do
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$p/ready" >/dev/null && break
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$p/ready" >/dev/null || { echo "error: 127.0.0.1:$p did not become ready (logs in $dir)" >&2; exit 2; }
done
echo "api on 127.0.0.1:$port, $WORKERS worker(s) × $CONCURRENCY slots, simulated latency ${LATENCY_MS} ± ${JITTER_MS} ms${CHUNKS:+ in $CHUNKS chunks}$([ "${STREAM:-0}" = 1 ] && echo ', streamed')" >&2

# Where the CPU goes: a snapshot of the busiest processes every 10 s; and
# the vacuum that a server without autovacuum lacks, when asked for.
( while sleep 10; do { date -u +%T; top -b -n 1 -w 200 | sed -n '1,3p;7,17p'; echo; } >>"$dir/top.txt"; done ) &
sampler_pid=$!
if [ -n "${VACUUM_EVERY:-}" ]; then
  every="${VACUUM_EVERY%s}"
  case "$every" in *m) every=$(( ${every%m} * 60 )) ;; esac
  ( while sleep "$every"; do
      { date -u +%T; psql "$DATABASE_URL" -qc "VACUUM (ANALYZE) jobs, conversation_queues" 2>&1; } >>"$dir/vacuum.log"
    done ) &
  pids+=($!)
fi

# The servers' CPU over the run (a work figure the machine's noise moves
# less than latency): the API and worker processes, and every postgres
# process on this machine (the server must be local for that figure).
api_ticks0=$(pid_ticks "${pids[0]}")
worker_ticks0=$(pid_ticks "${pids[@]:1:$WORKERS}")
pg_ticks0=$(pg_ticks)
set +e
SKIPJACK_API_KEY="$key" "$bin/loadgen" --url "http://127.0.0.1:$port" --scenario "$scenario" \
  --report-dir "$dir" --expected-latency-ms "$LATENCY_MS" --think "$THINK" --think-jitter "$THINK_JITTER" \
  "${loadgen_args[@]}" "${profile_args[@]}"
status=$?
set -e
unset key
api_ticks1=$(pid_ticks "${pids[0]}")
worker_ticks1=$(pid_ticks "${pids[@]:1:$WORKERS}")
pg_ticks1=$(pg_ticks)
# CPU per finished turn, next to the load generator's own (report.json).
python3 - "$dir/report.json" "$(getconf CLK_TCK)" \
  "$((api_ticks1 - api_ticks0))" "$((worker_ticks1 - worker_ticks0))" "$((pg_ticks1 - pg_ticks0))" <<'PY' \
  | tee -a "$dir/summary.txt" || true
import json, sys
report, tick = json.load(open(sys.argv[1])), int(sys.argv[2])
api, worker, pg = (int(t) / tick for t in sys.argv[3:6])
cpu = report.get("client_cpu") or {}
turns = cpu.get("turns") or report["counts"]["completed"]
if turns:
    ms = lambda s: s * 1000 / turns
    print(f"CPU per turn ({turns} turns): api {ms(api):.2f} ms, worker(s) {ms(worker):.2f} ms, "
          f"postgres {ms(pg):.2f} ms, loadgen {ms(cpu.get('cpu_s', 0)):.2f} ms")
PY

# The servers' own view of where the time went: job wait (submit → start)
# and run time (history load + LLM call) from the workers' metrics.
curl -sf "http://127.0.0.1:$port/metrics" >"$dir/metrics-api.txt" 2>/dev/null || true
for i in $(seq 1 "$WORKERS"); do
  curl -sf "http://127.0.0.1:$((port + i))/metrics" >"$dir/metrics-worker-$i.txt" 2>/dev/null || true
done
cat "$dir"/metrics-worker-*.txt 2>/dev/null | awk '
  /^skipjack_job_wait_seconds_sum/ { ws += $2 } /^skipjack_job_wait_seconds_count/ { wc += $2 }
  /^skipjack_job_run_seconds_sum/ { rs += $2 }  /^skipjack_job_run_seconds_count/ { rc += $2 }
  END { if (wc > 0 && rc > 0) printf "workers: %d jobs started, mean wait (submit → start) %.1f ms, mean run (history + LLM) %.1f ms\n", wc, ws / wc * 1000, rs / rc * 1000 }' \
  | tee -a "$dir/summary.txt"

# Table sizes at the end (job_history is partitioned: sum its partitions).
psql "$DATABASE_URL" -Atc "
  SELECT json_build_object(
    'jobs_bytes', pg_total_relation_size('jobs'),
    'jobs_rows', (SELECT count(*) FROM jobs),
    'job_history_bytes', (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)
                          FROM pg_inherits WHERE inhparent = 'job_history'::regclass),
    'job_history_rows', (SELECT count(*) FROM job_history),
    'messages_bytes', pg_total_relation_size('messages'),
    'messages_rows', (SELECT count(*) FROM messages),
    'jobs_dead_tuples', (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'),
    'jobs_autovacuum_count', (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'jobs'),
    'seq_tup_read', (SELECT json_object_agg(relname, seq_tup_read) FROM pg_stat_user_tables
                     WHERE seq_tup_read > 0))" \
  >"$dir/db.json" 2>>"$dir/setup.log" || true
[ -s "$dir/db.json" ] && {
  echo "database at the end: $(psql "$DATABASE_URL" -Atc "SELECT 'jobs ' || pg_size_pretty(pg_total_relation_size('jobs')) || ' (' || (SELECT count(*) FROM jobs) || ' rows), messages ' || pg_size_pretty(pg_total_relation_size('messages'))")"
  echo "  $(cat "$dir/db.json")"
} | tee -a "$dir/summary.txt"
echo "uptime after: $(uptime)" >>"$dir/machine.txt"
exit "$status"
