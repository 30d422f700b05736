# Sourced by scripts/callgrind-*.sh: starts BINARY ($1, default the release
# build) under `valgrind --tool=callgrind` on a fresh database of the
# development cluster (scripts/pg.sh) and waits until it answers. Leaves:
#   $bench   the newest `cargo bench --bench load` binary
#   $db_url  $key  $port  the server's database, token key and port
#   $server  its pid (for callgrind_control and kill -INT)
#   $out     a directory holding callgrind.out, server.log (and bench.log)
# CALLGRIND_LIMITS=on runs it with the rate limits on (see below);
# CALLGRIND=off runs it without valgrind (scripts/send-commit-busy.sh).
# Drops the database on exit; `callgrind_stop` stops the server and
# `callgrind_per N UNIT REGEX` prints the inclusive instructions per UNIT
# (N of them) of the functions matching REGEX.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(realpath "${1:-$repo/target/release/chatapp}")"
bench="$(ls -t "$repo"/target/release/deps/load-* | grep -v '\.[do]$' | head -1)"
if [ "${CALLGRIND:-on}" != off ]; then
  command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
fi

. "$repo/scripts/fresh-db.sh" callgrind
key="$(printf 'ab%.0s' $(seq 32))"
port=$((18000 + RANDOM % 2000))
out="$(mktemp -d)"

DATABASE_URL="$db_url" "$bin" migrate >/dev/null 2>&1
# The load generator's few users do what thousands of people would: no rate
# limits, or with CALLGRIND_LIMITS=on every limit on at the most the
# configuration accepts (checked on every request, never reached), so the
# two runs differ by the limiter's bookkeeping alone.
printf 'http:\n  max_connections: 1000000\nlimits:\n  sockets_per_user: 100000\n  rate:\n' >"$out/config.yaml"
if [ "${CALLGRIND_LIMITS:-off}" = on ]; then
  echo '    enabled: true' >>"$out/config.yaml"
  for limit in register_per_ip login_per_ip messages chats_created member_adds typing reads frames; do
    echo "    $limit: { per_minute: 10000000, burst: 1000000 }" >>"$out/config.yaml"
  done
else
  echo '    enabled: false' >>"$out/config.yaml"
fi
wrap=()
if [ "${CALLGRIND:-on}" != off ]; then
  wrap=(valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out")
fi
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" PORT="$port" CHATAPP_HOST=127.0.0.1 \
  CHATAPP_LOG_LEVEL=warn CHATAPP_BCRYPT_COST=4 \
  "${wrap[@]}" "$bin" serve --config "$out/config.yaml" \
  >"$out/server.log" 2>&1 &
server=$!
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 1
done

callgrind_stop() {
  kill -INT "$server"
  wait "$server" || true
}

callgrind_per() {
  callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null |
    grep -E "PROGRAM TOTALS|$3" |
    awk -v n="$1" -v unit="$2" '{ gsub(",", "", $1); printf "%10d Ir/%s  %s\n", $1 / n, unit, $0 }' |
    cut -c1-160
}
