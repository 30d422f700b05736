#!/usr/bin/env bash
# PostgreSQL's own CPU time for the group-commit statement, and for
# variants of it, with nothing else on the path: a fresh database of the
# development cluster (scripts/pg.sh) with 1,000 users in one chat, each
# statement run BATCHES times with 27 sends of 8 senders (no replies or
# mentions, contents shaped like the fan-out's), from one psql session; the
# session's backend CPU is read from /proc. Every table the statement
# touches is vacuumed before each run (outside the measured backend) so that
# a GIN pending-list flush lands in no run; the files alternate in ROUNDS
# rounds on one growing table.
#
#   cargo build --release --example send_batch_sql
#   scripts/statement-cpu.sh [VARIANT.sql ...]     ROUNDS=3 BATCHES=600
#
# The first file is always the server's statement (`send_batch_sql`); a
# variant is a copy of it edited by hand, taking the same eight parameters.
# Prints one line per run: round, file, CPU seconds, µs per message.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${ROUNDS:-3}"
batches="${BATCHES:-600}"
. "$repo/scripts/fresh-db.sh" statement_cpu
work="$(mktemp -d)"
"$repo/target/release/examples/send_batch_sql" >"$work/server.sql"
files=("$work/server.sql" "$@")

DATABASE_URL="$db_url" "$repo/target/release/chatapp" migrate >/dev/null 2>&1
psql "$db_url" -q <<'SQL'
insert into users (username, password_hash) select 'u' || g, 'x' from generate_series(1, 1000) g;
insert into chats (name, is_group, creator_id) values ('big', true, 1);
insert into chat_members (chat_id, user_id) select 1, g from generate_series(1, 1000) g;
analyze;
SQL

# BATCHES executions of FILE's statement, client ids unique to RUN.
batches_of() {
  python3 - "$1" "$2" "$batches" <<'PY'
import sys
path, run, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = 27
def arr(values, typ):
    return "array[" + ",".join(values) + "]::" + typ + "[]"
print("prepare b(int8[],int8[],text[],text[],text[],int8[],text[],int4[]) as "
      + open(path).read().strip().rstrip(";") + ";")
for k in range(batches):
    contents, searches, ids = [], [], []
    for i in range(n):
        seq = k * n + i
        ns = str(1733460000000000000 + seq)
        text = f"fo~c~{i % 8}~{seq}~{ns}~a benchmark message of ordinary length"
        words = sorted({"fo", "c", str(i % 8), str(seq), ns, "a", "benchmark", "message",
                        "of", "ordinary", "length"})
        contents.append("'" + text + "'")
        searches.append("$q$" + " ".join("'" + w + "'" for w in words) + "$q$")
        ids.append(f"'r{run}-{seq}'")
    senders = [str(1 + i % 8) for i in range(n)]
    print("execute b(" + ",".join([
        arr(["1"] * n, "int8"), arr(senders, "int8"), arr(contents, "text"),
        arr(ids, "text"), arr(searches, "text"), f"array_fill(null::int8, array[{n}])",
        f"array_fill(null::text, array[{n}])", f"array_fill(0, array[{n}])"]) + ");")
PY
}

# The CPU seconds (user + system) of the backend that runs SQL file $1.
backend_cpu() {
  local tag="statement_cpu_$$"
  # The sleeps let the last reading of /proc fall after the statements.
  { echo "set application_name = '$tag'; select pg_sleep(0.3);"; cat "$1"
    echo "select pg_sleep(0.3);"; } |
    psql "$db_url" -q -o /dev/null -v ON_ERROR_STOP=1 &
  local client=$! pid=""
  while [ -z "$pid" ]; do
    pid="$(psql "$db_url" -Atc "select pid from pg_stat_activity where application_name = '$tag'")"
  done
  local ticks last
  ticks="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  last="$ticks"
  while kill -0 "$client" 2>/dev/null; do
    last="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo "$last")"
    sleep 0.05
  done
  wait "$client"
  echo "scale=3; ($last - $ticks) / $(getconf CLK_TCK)" | bc
}

run=0
for round in $(seq "$rounds"); do
  for file in "${files[@]}"; do
    run=$((run + 1))
    batches_of "$file" "$run" >"$work/run.sql"
    psql "$db_url" -q -c "vacuum messages, events, chats, event_seq, users, chat_members"
    cpu="$(backend_cpu "$work/run.sql")"
    per="$(echo "scale=1; $cpu * 1000000 / ($batches * 27)" | bc)"
    printf '%s\t%s\t%s s\t%s µs/message\n' "$round" "$(basename "$file")" "$cpu" "$per"
  done
done
rm -rf "$work"
