#!/usr/bin/env bash
# Instructions the server spends per REST message send, counted by callgrind
# (stable on a noisy machine, where wall-clock A/B runs are not):
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/callgrind-send.sh [CHATAPP_BINARY]     default target/release/chatapp
#
# Runs the binary under `valgrind --tool=callgrind` on a fresh database of
# the development cluster (scripts/pg.sh), drives it with
# `cargo bench --bench load -- send --server ... --clients 64` (whose pgbench
# phase then runs against the same database), and prints the instructions
# per message of HTTP request handling (a connection's whole serving:
# parsing, routing, authentication, the send, the response, request ids,
# logging and metrics) and of authentication. Messages are counted as the
# calls of `Sent::from_row` (one per message a REST send returns).
set -euo pipefail

. "$(dirname "$0")/callgrind-server.sh"
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" send --server "http://127.0.0.1:$port" \
  --clients 64 --chats 4 --duration 10 --repeats 1 >"$out/bench.log" 2>&1
callgrind_stop

messages="$(python3 "$(dirname "$0")/callgrind-calls.py" "$out/callgrind.out" 'send::Sent::from_row$')"
echo "binary: $bin"
echo "messages sent by chatapp's clients: $messages (callgrind output: $out)"
callgrind_per "$messages" message 'server::Connection::serve::\{\{closure\}\} |auth::Auth::authenticate::\{\{closure\}\} |TokenKey::open'
