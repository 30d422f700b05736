#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL. Installs the server
# binaries if missing; each test binary then starts its own throwaway cluster
# (or uses DATABASE_URL when set) and gives every test a fresh database.
# Then runs the web client's end-to-end tests in Chromium (scripts/e2e.sh,
# which installs Chromium and the tests' npm packages when missing), checks
# the contract and fuzzes a live server against it (scripts/fuzz.sh).
#
#   scripts/test.sh              everything
#   scripts/test.sh ARGS...      only `cargo test ARGS...` (e.g. a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/pg.sh ensure
# libfaketime lets a test run a second node whose clock is behind.
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq faketime
fi
if [ "$#" -gt 0 ]; then
  exec cargo test --locked "$@"
fi
cargo test --locked --all-targets
scripts/e2e.sh
scripts/fuzz.sh
