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

# Schemathesis (PyPI) fuzzes the live API against its OpenAPI document (tests/tests/openapi.rs). Installed once per
# machine in a virtualenv next to the cargo cache.
tools="${BILLING_TOOLS_DIR:-/var/tmp/billing-tools}"
# Hypothesis pinned: later releases changed internals this Schemathesis uses.
wanted="schemathesis==3.39.16 hypothesis==6.122.1"
if [ "$(cat "$tools/schemathesis/installed" 2>/dev/null)" != "$wanted" ]; then
  rm -rf "$tools/schemathesis"
  python3 -m venv "$tools/schemathesis"
  # shellcheck disable=SC2086 # two requirements
  "$tools/schemathesis/bin/pip" install --quiet --disable-pip-version-check $wanted
  echo "$wanted" >"$tools/schemathesis/installed"
fi
export SCHEMATHESIS="$tools/schemathesis/bin/st"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "test suite finished after ${SECONDS}s (stack started by this run: $([ $started = 1 ] && echo yes || echo no))"
