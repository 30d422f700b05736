#!/usr/bin/env bash
# How busy the send's committing task is under `send --clients 64`: whether
# PostgreSQL ever waits for chatapp between group commits.
#
#   cargo build --release && cargo bench --bench load --no-run
#   scripts/send-commit-busy.sh [CHATAPP_BINARY]   default target/release/chatapp
#
# Starts the binary on a fresh database of the development cluster
# (scripts/pg.sh, as scripts/callgrind-server.sh does, without valgrind),
# drives it with the bench's `send` scenario, scrapes
# /metrics every half second, and prints per interval the share of wall
# time spent in commits (chatapp_send_commit_duration_seconds: from handing
# a batch to the pipeline connection until its rows are back), messages per
# commit and the commit's duration. About 1.0 means commits run back to
# back: the send is bound by how long a commit takes, not by the server
# leaving the database idle.
set -euo pipefail

CALLGRIND=off
. "$(dirname "$0")/callgrind-server.sh"

# time, messages committed, commits, seconds in commits
scrape() {
  while kill -0 "$server" 2>/dev/null; do
    printf '%s ' "$(date +%s.%N)"
    curl -s "http://127.0.0.1:$port/metrics" |
      awk '/^chatapp_send_batch_size_sum/ { m = $2 } /^chatapp_send_batch_size_count/ { c = $2 }
           /^chatapp_send_commit_duration_seconds_sum/ { s = $2 } END { print m + 0, c + 0, s + 0 }'
    sleep 0.5
  done
}
scrape >"$out/scrape.txt" &
DATABASE_URL="$db_url" CHATAPP_TOKEN_KEY="$key" "$bench" send --server "http://127.0.0.1:$port" \
  --clients 64 --chats 4 --duration 10 --repeats 1 --limits off >"$out/bench.log" 2>&1
grep -E "C=64 +chatapp +(messages/s|messages per commit)" "$out/bench.log"
awk 'NR > 1 { dt = $1 - t; dm = $2 - m; dc = $3 - c; ds = $4 - s
       if (dc > 0) printf "%.2f of the time in commits  %5.1f messages per commit  %5.2f ms per commit  %6.0f messages/s\n", ds / dt, dm / dc, 1000 * ds / dc, dm / dt }
     { t = $1; m = $2; c = $3; s = $4 }' "$out/scrape.txt"
callgrind_stop
echo "(scrapes and logs: $out)"
