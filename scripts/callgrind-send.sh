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
# per message of HTTP request handling and of authentication. Messages are
# counted as the chatapp phase's messages/s times its 10 s.
set -euo pipefail

. "$(dirname "$0")/callgrind-server.sh"
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" send --server "http://127.0.0.1:$port" \
  --clients 64 --chats 4 --duration 10 --repeats 1 >"$out/bench.log" 2>&1
callgrind_stop

messages="$(awk '/C=64 +chatapp +messages\/s/ {print int($(NF-1) * 10)}' "$out/bench.log")"
echo "binary: $bin"
echo "messages sent by chatapp's clients: $messages (callgrind output: $out)"
callgrind_per "$messages" message 'Oneshot<S,Req> as core::future|auth::authenticate::|auth::decode_token|TokenKey::open'
