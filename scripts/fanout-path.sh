#!/usr/bin/env bash
# Where a message spends its time before the fan-out, at `fanout`'s fixed
# rate: chatapp's group commits (messages per commit, how long each takes
# from handing the batch to the database until its rows are back) and its
# listen lag (from the event's statement to its dispatch on this node).
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/fanout-path.sh [CHATAPP_BINARY]   MEMBERS=10000
#
# Starts the binary on a fresh database of the development cluster
# (scripts/pg.sh, as scripts/callgrind-server.sh does, without valgrind),
# runs one `fanout` case (chatapp, then the ceiling), scrapes /metrics when
# chatapp's members have settled and again when its capacity phase begins,
# and prints the histograms' differences beside the bench's latencies
# (each message's first delivery being its path up to the fan-out).
set -euo pipefail

CALLGRIND=off
. "$(dirname "$0")/callgrind-server.sh"
members="${MEMBERS:-10000}"
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" --bench fanout \
  --server "http://127.0.0.1:$port" --members "$members" --repeats 1 >"$out/bench.log" 2>&1 &
bench_pid=$!
scraped=0
while kill -0 "$bench_pid" 2>/dev/null; do
  if [ $scraped = 0 ] && grep -q "settled, sending" "$out/bench.log"; then
    curl -s "http://127.0.0.1:$port/metrics" >"$out/before.txt"
    scraped=1
  elif [ $scraped = 1 ] && grep -q "capacity phase" "$out/bench.log"; then
    curl -s "http://127.0.0.1:$port/metrics" >"$out/after.txt"
    scraped=2
  fi
  sleep 0.05
done
wait "$bench_pid" || true
grep -E "M=$members +(chatapp|broadcast) +((p50|p99) send-to-receive|(first|last) delivery of a message)" \
  "$out/bench.log"
python3 - "$out/before.txt" "$out/after.txt" <<'EOF'
import re, sys

def load(path):
    values = {}
    for line in open(path):
        m = re.match(r'(\w+)(\{[^}]*\})? (\S+)', line)
        if m and not line.startswith('#'):
            values[m.group(1) + (m.group(2) or '')] = float(m.group(3))
    return values

before, after = load(sys.argv[1]), load(sys.argv[2])
delta = lambda k: after.get(k, 0.0) - before.get(k, 0.0)

def median(name):
    # The upper bound of the bucket holding the middle observation.
    count = delta(name + '_count')
    buckets = sorted(
        (float(k.split('"')[1]), delta(k)) for k in after
        if k.startswith(name + '_bucket') and '+Inf' not in k)
    for bound, seen in buckets:
        if seen >= count / 2:
            return bound
    return float('inf')

commits = delta('chatapp_send_batch_size_count')
messages = delta('chatapp_send_batch_size_sum')
commit = 'chatapp_send_commit_duration_seconds'
lag = 'chatapp_listen_lag_seconds'
print(f"fixed-rate phase: {messages:.0f} messages in {commits:.0f} group commits, "
      f"{messages / max(commits, 1):.2f} per commit")
print(f"commit: mean {1000 * delta(commit + '_sum') / max(commits, 1):.1f} ms, "
      f"median <= {1000 * median(commit):.0f} ms")
events = delta(lag + '_count')
print(f"listen lag: mean {1000 * delta(lag + '_sum') / max(events, 1):.1f} ms, "
      f"median <= {1000 * median(lag):.0f} ms over {events:.0f} events")
EOF
callgrind_stop
echo "(scrapes and logs: $out)"
