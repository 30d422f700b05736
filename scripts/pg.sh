#!/usr/bin/env bash
# Private PostgreSQL for development: installs the server if missing, then
# starts (or reuses) a cluster in DIR listening on 127.0.0.1:PORT and prints
# its URL. PostgreSQL refuses to run as root, so as root it runs as `postgres`.
#
#   scripts/pg.sh ensure                 install the server binaries only
#   scripts/pg.sh start [DIR] [PORT]     start the cluster, print DATABASE_URL
#                                        (if PORT is taken by something else, the
#                                        next free port is used and remembered)
#   scripts/pg.sh stop  [DIR]            stop it
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-start}"
dir="${2:-$repo/.data/pg}"
port="${3:-55432}"

# Whether something accepts connections on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return 0
  fi
  return 1
}

ensure() {
  if bindir >/dev/null; then return 0; fi
  echo "pg.sh: installing PostgreSQL from the distribution's packages" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  bindir >/dev/null || { echo "pg.sh: PostgreSQL server binaries still not found" >&2; exit 1; }
}

# Runs a PostgreSQL binary as `postgres` when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  ensure
  local bin; bin="$(bindir)"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    # The postgres user must be able to reach the directory; fall back to /tmp if not.
    if ! runuser -u postgres -- test -w "$dir"; then
      dir="/tmp/chatapp-pg-$(echo "$repo" | md5sum | cut -c1-8)"
      mkdir -p "$dir" && chown postgres:postgres "$dir"
    fi
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -A trust -U postgres -E UTF8 --locale C -D "$dir/data" >/dev/null
  fi
  # A port chosen by an earlier start (because the default was taken) sticks.
  if [ -f "$dir/port" ]; then port="$(cat "$dir/port")"; fi
  if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    if port_in_use "$port"; then
      local wanted="$port"
      while port_in_use "$port"; do port=$((port + 1)); done
      echo "pg.sh: port $wanted is taken by another program; using $port for the cluster in $dir" >&2
      echo "$port" >"$dir/port"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null; then
      echo "pg.sh: PostgreSQL did not start; its log ($dir/log) ends with:" >&2
      tail -n 5 "$dir/log" >&2
      exit 1
    fi
  fi
  as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "select 1 from pg_database where datname = 'chatapp'" | grep -q 1 ||
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres chatapp
  echo "postgres://postgres@127.0.0.1:$port/chatapp"
}

stop() {
  local bin; bin="$(bindir)"
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop
}

case "$cmd" in
  ensure) ensure ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 ensure | start [DIR] [PORT] | stop [DIR]" >&2; exit 2 ;;
esac
