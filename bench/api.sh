#!/usr/bin/env bash
# POST /v1/chat throughput and latency against the release build.
#
#   bash bench/api.sh                 # 256 and 1000 connections, 30 s each
#   CONNECTIONS="256" DURATION=10s bash bench/api.sh
#
# Needs Postgres (SKIPJACK_BENCH_ADMIN_URL, default the local server as
# postgres) and wrk (apt-get install wrk). Creates a scratch database
# skipjack_bench_api, migrates it, creates a tenant, starts the API with no
# worker (jobs just queue) and a queue limit high enough never to refuse,
# then runs wrk with bench/chat_post.lua for each connection count.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${SKIPJACK_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB_URL=${ADMIN_URL%/*}/skipjack_bench_api
CONNECTIONS=${CONNECTIONS:-"256 1000"}
DURATION=${DURATION:-30s}
THREADS=${THREADS:-2}
ADDR=${SKIPJACK_API_ADDR:-127.0.0.1:8000}

# 1000 connections need more descriptors than the usual 1024 soft limit.
ulimit -n "$(ulimit -Hn)"
[ -x target/release/api ] && [ -x target/release/skipjack ] || cargo build --release --bin api --bin skipjack

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS skipjack_bench_api WITH (FORCE)"
psql "$ADMIN_URL" -qc "CREATE DATABASE skipjack_bench_api"
DATABASE_URL=$DB_URL target/release/skipjack migrate 2>/dev/null
KEY=$(DATABASE_URL=$DB_URL target/release/skipjack tenants create bench 2>/dev/null)

DATABASE_URL=$DB_URL SKIPJACK_API_ADDR=$ADDR SKIPJACK_LOG_FORMAT=text RUST_LOG=warn,skipjack::api=info \
  SKIPJACK_MAX_QUEUE_DEPTH=100000000 SKIPJACK_MAX_TENANT_QUEUE_DEPTH=100000000 \
  target/release/api &
API_PID=$!
trap 'kill $API_PID 2>/dev/null; wait $API_PID 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://$ADDR/ready" >/dev/null && break; sleep 0.1; done

# Warm-up: default conversations and the auth cache.
SKIPJACK_KEY=$KEY wrk -t"$THREADS" -c64 -d3s -s bench/chat_post.lua "http://$ADDR" >/dev/null

for c in $CONNECTIONS; do
  echo "== $c connections, $DURATION"
  SKIPJACK_KEY=$KEY wrk -t"$THREADS" -c"$c" -d"$DURATION" --timeout 10s --latency \
    -s bench/chat_post.lua "http://$ADDR"
  psql "$DB_URL" -Atc "SELECT 'jobs queued: ' || count(*) FROM jobs"
done
