#!/usr/bin/env bash
# Wall-clock A/B of the send path between builds of two (or more) trees:
#
#   scripts/ab-send.sh ROUNDS TREE_A TREE_B ...
#
# Each TREE needs `cargo build --release && cargo bench --bench load --no-run`
# done. Per round and tree: a fresh database of the development cluster
# (scripts/pg.sh), that tree's `chatapp migrate` and `serve` (rate limits
# off), and that tree's load bench `send --server ... --clients 64 --chats 4
# --duration 10` (chatapp, then pgbench and pgbench batched on the same
# database). Trees alternate within a round, so drift on a shared machine
# falls on both. Prints each run's C=64 figures and the load average.
# TREEs are absolute paths (git worktrees of the commits to compare).
set -uo pipefail
rounds=$1; shift
cd "$(dirname "$0")/.."
for r in $(seq "$rounds"); do
  for tree in "$@"; do
    bin="$tree/target/release/chatapp"
    bench="$(ls -t "$tree"/target/release/deps/load-* | grep -v '\.[do]$' | head -1)"
    url="$(scripts/pg.sh start)"; admin="${url%/*}/postgres"; db="abtest_$$_${r}_$(basename $tree | tr -c 'a-z0-9\n' '_')"
    psql "$admin" -q -c "drop database if exists $db" >/dev/null 2>&1; psql "$admin" -q -c "create database $db"
    db_url="${url%/*}/$db"
    key="$(printf 'ab%.0s' $(seq 32))"; port=$((20000 + RANDOM % 2000)); out="$(mktemp -d)"
    DATABASE_URL="$db_url" "$bin" migrate >/dev/null 2>&1
    printf 'http:\n  max_connections: 1000000\nlimits:\n  sockets_per_user: 100000\n  rate:\n    enabled: false\n' >"$out/config.yaml"
    DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" PORT="$port" CHATAPP_HOST=127.0.0.1 CHATAPP_LOG_LEVEL=warn CHATAPP_BCRYPT_COST=4 \
      "$bin" serve --config "$out/config.yaml" >"$out/server.log" 2>&1 &
    server=$!
    for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
    DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" send --server "http://127.0.0.1:$port" \
      --clients 64 --chats 4 --duration 10 --repeats 1 >"$out/bench.log" 2>&1
    kill -INT $server; wait $server
    psql "$admin" -q -c "drop database if exists $db" >/dev/null 2>&1
    echo "round $r $tree load=$(cut -d' ' -f1 /proc/loadavg)"
    grep -E "^C=64 .*(messages/s|p99|CPU per message)" "$out/bench.log" | grep -v "limits on" | sed 's/^/   /'
  done
done
