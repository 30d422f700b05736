#!/usr/bin/env bash
# Each fan-out server's CPU, context switches and socket syscalls over 3 s
# of each capacity phase, counted by `perf stat` (linux-perf), so writes per
# delivery and CPU per write can be compared between chatapp and its ceiling:
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/fanout-syscalls.sh [MEMBERS]        default 1000,10000
#
# Runs `fanout` once against the development cluster (scripts/pg.sh) with
# the one-run command's options; prints perf's counts per phase, then the
# bench's capacity and CPU rows. Deliveries in the window are the phase's
# capacity times 3 s.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
members="${1:-1000,10000}"
url="$(scripts/pg.sh start)"
bench="$(ls -t target/release/deps/load-* | grep -v '\.[do]$' | head -1)"
out="$(mktemp -d)"
DATABASE_URL="$url" "$bench" --bench fanout --repeats 1 --fanout.members "$members" \
  --fanout.rate 52 --fanout.senders 2 --fanout.duration 5 --fanout.capacity 5 \
  --fanout.capacity-senders 8 --fanout.window 8 >"$out/bench.log" 2>&1 &
bench_pid=$!
seen=0
events=task-clock,context-switches,cpu-migrations
for call in sendto writev write recvfrom futex epoll_wait; do
  events="$events,syscalls:sys_enter_$call"
done
while kill -0 "$bench_pid" 2>/dev/null; do
  n="$(grep -c "capacity phase" "$out/bench.log" || true)"
  if [ "$n" -gt "$seen" ]; then
    seen="$n"
    case="$(grep "^fanout M=" "$out/bench.log" | tail -1)"
    if [[ "$case" == *chatapp* ]]; then
      pid="$(pgrep -f "target/release/chatapp serve" | head -1)"
    else
      pid="$(pgrep -f "broadcast-serve" | head -1)"
    fi
    sleep 0.5
    echo "== $case"
    perf stat -e "$events" -p "$pid" -- sleep 3 2>&1 |
      grep -E "task-clock|context|migrations|sys_enter" | awk '{print "   " $1, $2}'
  fi
  sleep 0.05
done
wait "$bench_pid"
report="$(grep -o 'target/bench/load-[^ ]*\.md' "$out/bench.log" | tail -1)"
grep -E "capacity deliveries|CPU per delivery \(µs\)" "$report"
rm -rf "$out"
