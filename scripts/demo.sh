#!/usr/bin/env bash
# Install and start the local stack, build the billing binary, and run the pipeline with the demo workloads (usage,
# then two months of billing on a test clock through the HTTP API). The demo serves the API until Ctrl-C (pass
# --exit-when-done to stop once it printed where to look); the stack keeps running afterwards, stop it with
# `make down`. Extra arguments go to `billing demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/stack up
cargo build --locked --bin billing
# The services run inside the demo: keep their logs to warnings so that the demo's own output stays readable
# (override with BILLING__TELEMETRY__FILTER=info).
export BILLING__TELEMETRY__FILTER="${BILLING__TELEMETRY__FILTER:-warn,scylla=error,librdkafka=error}"
exec "${CARGO_TARGET_DIR:-target}/debug/billing" demo "$@"
