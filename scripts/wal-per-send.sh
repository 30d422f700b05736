#!/usr/bin/env bash
# PostgreSQL's work per message send, one message per transaction, in WAL
# bytes (exact, whatever else the machine does) and transactions/s:
#
#   cargo bench --bench load -- send --smoke    # writes the send statement
#   scripts/wal-per-send.sh [CHATAPP_BINARY] [TRANSACTIONS]
#
# Migrates a fresh database of the development cluster (scripts/pg.sh) with
# the binary's own migrations (default target/release/chatapp), seeds one
# user in one chat, and runs pgbench with the statement the server sends for
# one message (the `send` scenario's pgbench script) on one connection.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-$repo/target/release/chatapp}")"
n="${2:-20000}"
script="$(ls -t "$repo"/target/bench/logs/send-*.pgbench.sql 2>/dev/null | head -1)"
[ -n "$script" ] || { echo "run: cargo bench --bench load -- send --smoke" >&2; exit 1; }

. "$repo/scripts/fresh-db.sh" wal
DATABASE_URL="$db_url" "$bin" migrate >/dev/null 2>&1
psql "$db_url" -q -c "
  insert into users (username, password_hash) values ('wal', 'x');
  insert into chats (name, is_group) values ('wal', true);
  insert into chat_members (chat_id, user_id) select c.id, u.id from chats c, users u;"
one="$(mktemp)"
{ echo '\set chat 1'; echo '\set sender 1'; grep -v '^\\set' "$script"; } >"$one"
start="$(psql "$db_url" -Atq -c 'select pg_current_wal_lsn()')"
tps="$(pgbench -n -M prepared -c 1 -t "$n" -f "$one" "$db_url" 2>"$one.err" |
  awk '/^tps/ { print $3 }')" || { cat "$one.err" >&2; rm -f "$one" "$one.err"; exit 1; }
end="$(psql "$db_url" -Atq -c 'select pg_current_wal_lsn()')"
# Every send landed (a statement that no longer fits the schema, or a seed
# the member check refuses, would otherwise measure nothing).
landed="$(psql "$db_url" -Atq -c "select (select count(*) from messages) || ' ' || (select count(*) from events where kind = 'message')")"
[ "$landed" = "$n $n" ] || { echo "expected $n messages and $n message events, found: $landed" >&2; exit 1; }
wal="$(psql "$db_url" -Atq -c "select pg_wal_lsn_diff('$end', '$start') / $n")"
rm -f "$one" "$one.err"
printf 'binary: %s\nmessages: %d  WAL bytes/message: %.0f  transactions/s: %s\n' "$bin" "$n" "$wal" "$tps"
