# Shared helpers for the scripts in this folder. Source it; do not run it.

# Starts the local Postgres cluster when the server in the URL ($1) does not
# answer and is on this machine; fails with a clear message otherwise.
ensure_postgres() {
  local url="$1"
  if ! command -v pg_isready >/dev/null 2>&1; then
    echo "error: the PostgreSQL client tools (pg_isready, psql) are missing: apt-get install postgresql-client" >&2
    exit 1
  fi
  if pg_isready -q -d "$url"; then
    return 0
  fi
  case "$url" in
    *@127.0.0.1*|*@localhost*|*//127.0.0.1*|*//localhost*) ;;
    *)
      echo "error: Postgres at the configured URL is not reachable, and it is not a local server this script can start" >&2
      exit 1
      ;;
  esac
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    echo "Postgres is not answering; starting the local cluster ($version/main)" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    echo "error: Postgres is not reachable on this machine and no local cluster is installed (apt-get install postgresql)" >&2
    exit 1
  fi
  for _ in $(seq 1 60); do
    if pg_isready -q -d "$url"; then
      return 0
    fi
    sleep 0.5
  done
  echo "error: Postgres did not become ready within 30 s" >&2
  exit 1
}

# Starts a local Redis when none answers on 127.0.0.1:6379.
ensure_redis() {
  if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "error: Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed (apt-get install redis-server)" >&2
    exit 1
  fi
  echo "Redis is not answering; starting redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 40); do
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  echo "error: Redis did not become ready within 10 s" >&2
  exit 1
}

# The database name of a postgres:// URL, and the same URL pointed at the
# maintenance database `postgres`. Only the path after the authority
# (user:password@host:port) is the database: a user or host named like the
# database is left alone, and so are the query parameters (sslmode=...).
db_name() {
  local rest="${1#*://}" path
  case "$rest" in
    */*) path="${rest#*/}" ;;
    *) path="" ;;
  esac
  printf '%s' "${path%%\?*}"
}

admin_url() {
  local url="$1" scheme rest authority path query=""
  scheme="${url%%://*}"
  rest="${url#*://}"
  authority="${rest%%/*}"
  path="${rest#"$authority"}"
  case "$path" in
    *\?*) query="?${path#*\?}" ;;
  esac
  case "$authority" in
    *\?*) query="?${authority#*\?}"; authority="${authority%%\?*}" ;;
  esac
  printf '%s://%s/postgres%s' "$scheme" "$authority" "$query"
}

# Creates the URL's database unless it exists.
ensure_database() {
  local url="$1" name admin
  name="$(db_name "$url")"
  admin="$(admin_url "$url")"
  if [ "$(psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != "1" ]; then
    echo "creating database $name" >&2
    psql "$admin" -qc "CREATE DATABASE \"$name\""
  fi
}

# utime + stime of the given processes, in clock ticks (getconf CLK_TCK a
# second).
pid_ticks() {
  local pid total=0 stat
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"${stat##*)}")))
  done
  echo "$total"
}

# utime + stime of every process named postgres on this machine, in clock
# ticks.
pg_ticks() {
  local d pids=()
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = postgres ] && pids+=("${d#/proc/}")
  done
  pid_ticks "${pids[@]}"
}
