#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL. Installs the server
# binaries if missing; each test binary then starts its own throwaway cluster
# (or uses DATABASE_URL when set) and gives every test a fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/pg.sh ensure
cargo test --locked --all-targets "$@"
