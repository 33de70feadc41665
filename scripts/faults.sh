#!/usr/bin/env bash
# The fault suite (tests/faults.rs) at full length: the stack (api, two
# workers, a private Postgres cluster) under provider faults, worker
# SIGKILLs, a listener kill, a Postgres crash and a job_history reader
# during a partition drop, ending with the integrity check and a table of
# what each fault did. The test command runs the 40 s form of it.
#   scripts/faults.sh [SECONDS]     (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres "${SKIPJACK_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
SKIPJACK_FAULTS_SECONDS="${1:-300}" exec cargo nextest run --test faults --no-capture
