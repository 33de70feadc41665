#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the operations files
# (Prometheus rules with promtool, Kubernetes manifests with
# deploy/validate.py, docker-compose.yml when `docker compose` exists), and
# the migrations with squawk, and the test suite against a real Postgres
# (and Redis), each started here when it is not running. Tools that are
# missing are installed (promtool from Debian's prometheus package,
# kubernetes-validate and squawk-cli from PyPI into target/ops-venv and
# target/squawk-venv), or the script says what to install and fails.
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
# The whole workspace: the product and tools/ (load generator, benchmarks).
cargo clippy --workspace --all-targets -- -D warnings
# The library's documentation: every link resolves.
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps -p skipjack

# --- Operations files -------------------------------------------------------

# Runs apt-get as root, through sudo when needed; fails when neither works.
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo="sudo" || return 1
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ||
    { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; }
}

# promtool ships in Debian's prometheus package, whose server we do not
# want: where the package started it (a host with systemd), stop and
# disable it again so it holds no port.
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool is missing: installing Debian's prometheus package for it" >&2
  if ! apt_install prometheus; then
    echo "error: promtool not found and it cannot be installed here; install it (apt-get install prometheus, or promtool from https://prometheus.io/download/)" >&2
    exit 1
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd systemctl disable --now prometheus || true
  fi
fi
# The console's browser test (tests/console_browser.rs) drives headless
# Chromium through chromedriver, both from Debian.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromium or chromedriver is missing: installing Debian's chromium and chromium-driver" >&2
  if ! apt_install chromium chromium-driver; then
    echo "error: the console's browser test needs chromium and chromedriver: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi

promtool check config prometheus/prometheus.yml
promtool test rules prometheus/alerts.test.yml

# kubernetes-validate bundles the Kubernetes schemas: offline once installed.
venv=target/ops-venv
if ! "$venv/bin/python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    echo "python3 with venv is missing: installing python3-venv" >&2
    apt_install python3 python3-venv || {
      echo "error: python3 (with the venv module) is needed to validate deploy/: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' || {
    echo "error: cannot install kubernetes-validate from PyPI into $venv (network?)" >&2
    exit 1
  }
fi
"$venv/bin/python" deploy/validate.py

# --- Migrations ---------------------------------------------------------------

# squawk lints every migration for statements that lock busy tables or
# cannot be rerun (.squawk.toml lists the exceptions and why). Installed
# from PyPI into target/squawk-venv once; offline after that.
squawk_venv=target/squawk-venv
if ! "$squawk_venv/bin/squawk" --version >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv || {
      echo "error: python3 (with the venv module) is needed to lint migrations: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  rm -rf "$squawk_venv"
  python3 -m venv "$squawk_venv"
  "$squawk_venv/bin/pip" install --quiet --disable-pip-version-check 'squawk-cli==2.70.0' || {
    echo "error: cannot install squawk-cli from PyPI into $squawk_venv (network?)" >&2
    exit 1
  }
fi
"$squawk_venv/bin/squawk" --config .squawk.toml migrations/*.sql

if docker compose version >/dev/null 2>&1; then
  docker compose config --quiet
else
  echo "docker compose is not installed: docker-compose.yml is checked by tests/observability.rs only" >&2
fi

# tests/pgbouncer.rs: PgBouncer >= 1.21 (built from source where Debian's is
# older); tests/tls.rs uses Postgres's initdb/pg_ctl and redis-server.
export SKIPJACK_PGBOUNCER="${SKIPJACK_PGBOUNCER:-$(bash scripts/pgbouncer.sh)}"
# Everything above is installed: a test that would skip for a missing tool
# fails instead.
export SKIPJACK_TEST_REQUIRE_ALL=1

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  cargo test --workspace
fi
