# Sourced by the measuring scripts, with $repo set and a name as $1: starts
# the development cluster (scripts/pg.sh) if it is not running, creates a
# fresh database NAME_<pid> in it, and drops that on exit. Leaves $db_url.
url="$("$repo/scripts/pg.sh" start)"
db="${1}_$$"
admin="${url%/*}/postgres"
psql "$admin" -q -c "create database $db"
trap 'psql "$admin" -q -c "drop database if exists $db" >/dev/null 2>&1 || true' EXIT
db_url="${url%/*}/$db"
