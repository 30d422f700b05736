#!/usr/bin/env bash
# End-to-end tests of the web client (web/) in a real browser: Debian's
# Chromium driven by playwright-core, run by `node --test` (tests/e2e/).
#
# Installs Chromium with apt-get when /usr/bin/chromium is missing (never a
# browser download of Playwright's own), runs `npm ci` in tests/e2e when the
# installed playwright-core is not the locked one, builds the binary `cargo
# test` uses (or takes CHATAPP_BIN), starts a throwaway PostgreSQL cluster
# on a free port, and hands the tests the server's binary and environment:
# they start and stop `chatapp serve` themselves (one test restarts it).
# Everything is stopped at exit. Screenshots go to target/e2e-screenshots/,
# the server's log to target/e2e-server.log.
#
#   scripts/e2e.sh [extra node --test arguments, e.g. --test-name-pattern=DM]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e.sh: installing Debian's chromium" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "e2e.sh: installing Node.js and npm" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
fi

if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "e2e.sh: playwright-core needs Node.js 20 or later, this is $(node --version)" >&2
  exit 1
fi
# The playwright-core version a lockfile names (npm writes the installed
# tree's to node_modules/.package-lock.json); "none" without one.
locked_version() {
  node -e 'try {
      const lock = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      console.log(lock.packages["node_modules/playwright-core"].version);
    } catch { console.log("none"); }' "$1"
}
if [ "$(locked_version tests/e2e/node_modules/.package-lock.json)" != "$(locked_version tests/e2e/package-lock.json)" ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# The debug build: `cargo test` and scripts/fuzz.sh use it too, so in
# scripts/test.sh it is already built.
if [ -z "${CHATAPP_BIN:-}" ]; then
  cargo build --locked --quiet --bin chatapp >&2
  CHATAPP_BIN="$repo/target/debug/chatapp"
fi

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

work="$(mktemp -d /tmp/chatapp-e2e.XXXXXX)"
chmod 755 "$work" # as root, PostgreSQL runs as `postgres` and must reach $work/pg
pidfile="$work/server.pid"
pg_started=""
test_pid=""
cleanup() {
  local status=$?
  if [ -n "$test_pid" ]; then kill -TERM "$test_pid" 2>/dev/null || true; wait "$test_pid" 2>/dev/null || true; fi
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    sleep 1
    kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
  fi
  if [ -n "$pg_started" ]; then "$repo/scripts/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

pg_port="$(free_port)"
pg_started=1
DATABASE_URL="$(scripts/pg.sh start "$work/pg" "$pg_port")"

mkdir -p target/e2e-screenshots
: >target/e2e-server.log
# The defaults but two: no drain delay (one test restarts the server, and no
# load balancer waits for /readyz to say 503), and messages refill at 1/s
# instead of 10/s (same burst), so that the test of a send over the limit
# cannot see the limit refill before its send arrives.
cat >"$work/config.yaml" <<'YAML'
http:
  drain_delay_secs: 0
limits:
  rate:
    messages: {per_minute: 60, burst: 60}
YAML
export CONFIG_PATH="$work/config.yaml"
export DATABASE_URL CHATAPP_BIN
export PORT="$(free_port)"
export CHATAPP_HOST=127.0.0.1
export CHATAPP_TOKEN_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
export CHATAPP_BCRYPT_COST=4
export CHATAPP_LOG_LEVEL="${CHATAPP_LOG_LEVEL:-info}"
export E2E_BASE_URL="http://127.0.0.1:$PORT"
export E2E_SERVER_PIDFILE="$pidfile"
export E2E_SERVER_LOG="$repo/target/e2e-server.log"

echo "e2e.sh: chatapp at $E2E_BASE_URL, PostgreSQL at $DATABASE_URL" >&2
cd tests/e2e
# In the background and waited for, so that a signal runs the cleanup at once.
node --test --test-concurrency=1 "$@" ./*.test.mjs &
test_pid=$!
wait "$test_pid"
