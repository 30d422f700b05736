#!/usr/bin/env bash
# Quick start: runs the server on this machine with no prior setup. Without
# DATABASE_URL it starts a private PostgreSQL under .data/ (git-ignored).
# Extra arguments go to `chatapp serve` (e.g. --config config.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "run.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL="$(scripts/pg.sh start)"
  export DATABASE_URL
  echo "run.sh: using private PostgreSQL at $DATABASE_URL (stop it with scripts/pg.sh stop)" >&2
fi
cargo build --release --locked
# Once the server answers, say where to open it.
port="${PORT:-8080}"
(
  for _ in $(seq 600); do
    if PORT="$port" target/release/chatapp healthcheck >/dev/null 2>&1; then
      echo "run.sh: chatapp is up: open http://localhost:$port/ (API under /api/v1, docs at /api/docs)" >&2
      exit 0
    fi
    sleep 0.5
  done
) &
exec target/release/chatapp serve "$@"
