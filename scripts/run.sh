#!/usr/bin/env bash
# Runs skipjack on this machine: makes sure Postgres answers (starting the
# local cluster if needed), creates the database, migrates it, and starts the
# API (:8000) and a worker (health and metrics on :8080). Stop with Ctrl-C
# (both drain and exit). Create an API key with
#   target/release/skipjack tenants create NAME
#
#   DATABASE_URL      default postgres://postgres@127.0.0.1:5432/skipjack
#   SKIPJACK_PROFILE  cargo profile to build, default release
#   Every other SKIPJACK_* setting is passed through (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/skipjack}"
profile="${SKIPJACK_PROFILE:-release}"

ensure_postgres "$(admin_url "$DATABASE_URL")"
ensure_database "$DATABASE_URL"
cargo build --profile "$profile" --bins
bin="target/$profile"
[ "$profile" = dev ] && bin=target/debug
"$bin/skipjack" migrate

pids=()
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

"$bin/api" &
pids+=($!)
"$bin/worker" &
pids+=($!)
echo "api on ${SKIPJACK_API_ADDR:-0.0.0.0:8000}, worker health and metrics on ${SKIPJACK_WORKER_ADDR:-0.0.0.0:8080}; Ctrl-C to stop" >&2
wait -n "${pids[@]}" || true
stop
