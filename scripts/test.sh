#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, and the test suite against
# a real Postgres (and Redis), each started here when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export SKIPJACK_TEST_DATABASE_URL="${SKIPJACK_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
ensure_postgres "$SKIPJACK_TEST_DATABASE_URL"
ensure_redis

# Test databases left behind by an interrupted run, and old templates (each
# run migrates a fresh one).
psql "$SKIPJACK_TEST_DATABASE_URL" -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'skipjack\_test\_%' OR datname LIKE 'skipjack\_tpl\_%'" |
  while read -r name; do
    [ -n "$name" ] && psql "$SKIPJACK_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)"
  done

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --profile ci
else
  cargo test
fi
