#!/usr/bin/env bash
# Checks the contract, then fuzzes a live server against it.
#
# scripts/check-contract.py checks both documents on their own (valid
# OpenAPI 3.1 and JSON Schemas, the code's rules per operation, samples).
# Then schemathesis (pinned in scripts/fuzz/requirements.txt, installed into
# a venv this script creates; settings in scripts/fuzz/schemathesis.toml)
# runs every check — no server errors, statuses, content types,
# headers and bodies as documented, bad input refused, good input accepted,
# authentication not ignored, deleted resources gone — authenticated as a
# real user who has a chat, a member and a message, bounded in examples and
# time. Any failure fails the script. Also checks that a token the server
# just issued is accepted at once by another PASETO implementation (pyseto).
#
#   scripts/fuzz.sh            FUZZ_MAX_TIME (s, default 150) bounds the run
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

# Debian's python3 makes virtualenvs only with python3-venv installed.
missing=""
python3 -c 'import ensurepip' 2>/dev/null || missing="python3-venv"
command -v curl >/dev/null || missing="$missing curl"
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi

venv="$repo/target/fuzz-venv"
requirements="$repo/scripts/fuzz/requirements.txt"
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

CONTRACT_VENV="$repo/target/contract-venv" python3 scripts/check-contract.py

cargo build --locked --quiet
source "$repo/scripts/fresh-db.sh" fuzz

work="$(mktemp -d /tmp/chatapp-fuzz.XXXXXX)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
cat > "$work/config.yaml" <<YAML
host: 127.0.0.1
port: $port
database: {url: "$db_url"}
auth: {token_key: "$key", bcrypt_cost: 4}
log: {level: info}
http: {drain_delay_secs: 0}
# Rate limits are tested on their own; here they would only turn most of the
# generated requests into 429s.
limits: {rate: {enabled: false}}
YAML
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  cp "$work/server.log" "$repo/target/fuzz-server.log" 2>/dev/null
  rm -rf "$work"
}
trap 'cleanup; psql "$admin" -q -c "drop database if exists $db" >/dev/null 2>&1 || true' EXIT

target/debug/chatapp migrate --config "$work/config.yaml" >/dev/null
target/debug/chatapp serve --config "$work/config.yaml" 2>"$work/server.log" &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fs "$base/livez" >/dev/null 2>&1 && break
  sleep 0.1
done

# The user the fuzzer acts as, with something to act on.
post() { curl -fsS -X POST -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2" "$base$1"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
token="$(post /api/v1/auth/register '{"username":"fuzzer","password":"fuzzer-password"}' | field '["token"]')"
other="$(post /api/v1/auth/register '{"username":"member","password":"member-password"}' | field '["user"]["id"]')"
chat="$(post /api/v1/chats "{\"name\":\"fuzzing\",\"member_ids\":[$other]}" "$token" | field '["id"]')"
post /api/v1/messages "{\"chat_id\":$chat,\"content\":\"hello\"}" "$token" >/dev/null

"$venv/bin/python" - "$token" "$key" <<'PY'
import json, sys, pyseto
token, key = sys.argv[1], bytes.fromhex(sys.argv[2])
decoded = pyseto.decode(pyseto.Key.new(version=4, purpose="local", key=key), token, deserializer=json)
print(f"fuzz.sh: pyseto accepts a fresh token for user {decoded.payload['user_id']}", file=sys.stderr)
PY

status=0
# From the scratch directory: schemathesis keeps a cache in ./.schemathesis.
(cd "$work" && "$venv/bin/schemathesis" --config-file "$repo/scripts/fuzz/schemathesis.toml" run "$base/api/v1/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $token" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${FUZZ_MAX_EXAMPLES:-40}" \
  --max-time "${FUZZ_MAX_TIME:-150}" \
  --request-timeout 10 \
  --workers 1 \
  --seed 1 \
  --generation-database none \
  --no-color) || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz.sh: schemathesis found failures; the server's log is target/fuzz-server.log" >&2
  grep -E " (ERROR|WARN) " "$work/server.log" | tail -n 20 >&2 || true
fi
exit "$status"
