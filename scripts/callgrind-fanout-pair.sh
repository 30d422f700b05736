#!/usr/bin/env bash
# Instructions per delivery of chatapp and of the broadcast ceiling side by
# side, over the fixed-rate phase of one `fanout` run (single-frame writes
# at the default 10 messages/s), each server under callgrind:
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/callgrind-fanout-pair.sh [CHATAPP_BINARY]   MEMBERS=1000 RATE=10
#
# The counters of each server are zeroed a few seconds after its members
# settled (under callgrind the presence snapshots take that long) and dumped
# when its capacity phase begins, so the window holds sending alone; the
# frames each wrote are counted from the calls that frame them
# (chatapp's `wire::push_head`, tungstenite's `WebSocketContext::write`).
set -euo pipefail

. "$(dirname "$0")/callgrind-server.sh"
members="${MEMBERS:-1000}" rate="${RATE:-10}"
BROADCAST_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$out/ceiling.out" \
  DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" fanout --server "http://127.0.0.1:$port" \
  --members "$members" --rate "$rate" --senders 2 --duration 20 --capacity 1 \
  --capacity-senders 2 --window 2 --repeats 1 >"$out/bench.log" 2>&1 &
bench_pid=$!
zeroed=0 dumped=0
while kill -0 "$bench_pid" 2>/dev/null; do
  settled="$(grep -c "settled, sending" "$out/bench.log" || true)"
  capacity="$(grep -c "capacity phase" "$out/bench.log" || true)"
  if grep -qE "^fanout M=[0-9]+ broadcast$" "$out/bench.log"; then
    pid="$(pgrep -f "valgrind.*broadcast-serve" | head -1 || true)"
  else
    pid="$server"
  fi
  if [ "$settled" -gt "$zeroed" ]; then
    zeroed=$settled
    sleep 6
    callgrind_control -z "$pid" >/dev/null 2>&1
  fi
  if [ "$capacity" -gt "$dumped" ]; then
    dumped=$capacity
    callgrind_control -d "$pid" >/dev/null 2>&1
  fi
  sleep 0.05
done
callgrind_stop
per_frame() {
  local file="$1" framing="$2" frames
  frames="$(python3 "$(dirname "$0")/callgrind-calls.py" "$file" "$framing")"
  echo "frames written: $frames"
  callgrind_annotate --inclusive=yes "$file" 2>/dev/null | grep -E "PROGRAM TOTALS" |
    awk -v n="$frames" '{ gsub(",", "", $1); printf "%10d Ir/delivery\n", $1 / n }'
}
echo "chatapp ($bin):"
per_frame "$out/callgrind.out.1" 'wire::push_head$'
echo "broadcast ceiling:"
per_frame "$out/ceiling.out.1" 'WebSocketContext::write$'
echo "(callgrind output: $out)"
