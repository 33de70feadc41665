#!/usr/bin/env bash
# Checks of the URL helpers in lib.sh (run by tests/observability.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

failures=0
check() {
  local what="$1" got="$2" want="$3"
  if [ "$got" != "$want" ]; then
    echo "FAIL $what: got '$got', want '$want'" >&2
    failures=$((failures + 1))
  fi
}

for case in \
  "postgres://postgres@127.0.0.1:5432/skipjack|skipjack|postgres://postgres@127.0.0.1:5432/postgres" \
  "postgres://skipjack:skipjack@postgres:5432/skipjack|skipjack|postgres://skipjack:skipjack@postgres:5432/postgres" \
  "postgres://skipjack@skipjack/skipjack|skipjack|postgres://skipjack@skipjack/postgres" \
  "postgresql://app:s3cret@db.internal:6432/app?sslmode=require|app|postgresql://app:s3cret@db.internal:6432/postgres?sslmode=require" \
  "postgres://u@h/my_db?sslmode=verify-full&application_name=x|my_db|postgres://u@h/postgres?sslmode=verify-full&application_name=x" \
  "postgres://postgres@127.0.0.1:5432/postgres|postgres|postgres://postgres@127.0.0.1:5432/postgres" \
  "postgres://u@h|\
|postgres://u@h/postgres"; do
  IFS='|' read -r url name admin <<<"$case"
  check "db_name $url" "$(db_name "$url")" "$name"
  check "admin_url $url" "$(admin_url "$url")" "$admin"
done

if [ "$failures" -gt 0 ]; then
  exit 1
fi
echo "scripts/lib.sh: URL helpers OK"
