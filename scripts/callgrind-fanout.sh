#!/usr/bin/env bash
# Instructions the server spends per fan-out delivery, counted by callgrind
# (stable on a noisy machine, where wall-clock A/B runs are not):
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/callgrind-fanout.sh [CHATAPP_BINARY]    default target/release/chatapp
#   MEMBERS=10000 RATE=1 scripts/callgrind-fanout.sh  a larger room (default 1000, 10/s)
#
# Runs the binary under `valgrind --tool=callgrind` on a fresh database of
# the development cluster (scripts/pg.sh), drives it with
# `cargo bench --bench load -- fanout --server ... --members 1000` at a rate
# callgrind keeps up with, resets the counters once everyone is connected
# (so connecting and presence are left out), and prints the instructions per
# delivery of the whole process and of its parts: the writer tasks, the
# dispatcher that queues frames, the runtime's I/O driver. Deliveries are
# counted from the bench's own figures (rate and capacity phases).
set -euo pipefail

. "$(dirname "$0")/callgrind-server.sh"
members="${MEMBERS:-1000}" rate="${RATE:-10}" duration=10 capacity=5
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" fanout --server "http://127.0.0.1:$port" \
  --members "$members" --rate "$rate" --senders 2 --duration "$duration" --capacity "$capacity" \
  --capacity-senders 2 --window 2 --repeats 1 >"$out/bench.log" 2>&1 &
bench_pid=$!
# Zero the counters once the members are connected and presence settled
# (the bench says so on stderr), so only sending is counted.
for _ in $(seq 1200); do
  grep -q "fanout: $members members settled" "$out/bench.log" 2>/dev/null && break
  sleep 0.25
done
callgrind_control -z "$server" >/dev/null
wait "$bench_pid" || true
callgrind_stop
# Every member gets every fixed-rate message (the bench checks it); the
# capacity phase delivers its deliveries/s for its seconds.
deliveries="$(awk -v r="$rate" -v d="$duration" -v c="$capacity" -v m="$members" '
  $1 == "M=" m && /chatapp +capacity deliveries\/s/ { cap = $(NF-2) }
  END { print int(r * d * m + cap * c) }' "$out/bench.log")"
echo "binary: $bin"
echo "deliveries: $deliveries (callgrind output: $out)"
callgrind_per "$deliveries" delivery \
  'ws::conn::write_loop::|ws::listener::run::|Registry::dispatch_all|watch::Receiver<T>::changed|ws::conn::killed|poll_flush \[|tokio::runtime::io::driver::Driver::turn'
