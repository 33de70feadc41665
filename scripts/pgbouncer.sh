#!/usr/bin/env bash
# Makes sure a PgBouncer >= 1.21 is installed (tests/pgbouncer.rs needs
# transaction pooling with protocol-level prepared statements, which older
# PgBouncers lack). Debian's package is used when it is new enough;
# otherwise (Debian 12 ships 1.18) PgBouncer is built from Debian 13's
# source package into /usr/local. Prints the binary's path.
set -euo pipefail

version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | awk 'NR==1 {print $2}')
  [ -n "$v" ] && [ "$(printf '%s\n1.21\n' "$v" | sort -V | head -1)" = 1.21 ]
}

for candidate in /usr/local/bin/pgbouncer "$(command -v pgbouncer || true)" /usr/sbin/pgbouncer; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && version_ok "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

# Debian's own package first: new enough on Debian 13 and later.
$sudo apt-get install -y --no-install-recommends pgbouncer >/dev/null 2>&1 ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends pgbouncer >/dev/null; } || true
if [ -x /usr/sbin/pgbouncer ] && version_ok /usr/sbin/pgbouncer; then
  echo /usr/sbin/pgbouncer
  exit 0
fi

echo "Debian's PgBouncer is older than 1.21: building Debian 13's from source" >&2
$sudo apt-get install -y --no-install-recommends build-essential pkg-config libevent-dev libssl-dev >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache"
cat >"$work/parts/trixie-src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# A list directory of its own: the system's package lists stay untouched.
apt_opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$work/parts"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only pgbouncer >/dev/null 2>&1)
tar -C "$work" -xzf "$work"/pgbouncer_*.orig.tar.gz
src=$(find "$work" -maxdepth 1 -type d -name 'pgbouncer-*' | head -1)
(cd "$src" && ./configure --prefix=/usr/local --without-cares >/dev/null && make -j"$(nproc)" >/dev/null && $sudo make install >/dev/null)
version_ok /usr/local/bin/pgbouncer
echo /usr/local/bin/pgbouncer
