#!/usr/bin/env bash
# Install and start the local stack, build the billing binary, and run the pipeline with a demo workload.
# The stack keeps running afterwards; stop it with `make down`. Extra arguments go to `billing demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/stack up
cargo build --locked --bin billing
exec "${CARGO_TARGET_DIR:-target}/debug/billing" demo "$@"
