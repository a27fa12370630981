#!/usr/bin/env bash
# The whole test suite, as CI runs it: install and start the local stack if it is not running, check formatting
# and lints, run unit, integration and end-to-end tests against the real servers, and stop what this script
# started. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

stack=deploy/local/stack
started=0
if ! "$stack" status >/dev/null 2>&1; then
  started=1
  trap '"$stack" down' EXIT
fi
SECONDS=0
"$stack" up
echo "stack ready after ${SECONDS}s"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "test suite finished after ${SECONDS}s (stack started by this run: $([ $started = 1 ] && echo yes || echo no))"
