# Self-documenting targets: `make help`.
.DEFAULT_GOAL := help
.PHONY: help demo test up down status wipe migrate lint bench bench-core bench-usage bench-billrun bench-payments bench-api

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

demo: ## Install and start everything, run the pipeline with a demo workload, and show where to look
	scripts/demo.sh

test: ## Run every test (starts the stack if needed and stops what it started)
	scripts/test.sh

up: ## Install (cached) and start Kafka, Cassandra and ClickHouse on loopback
	deploy/local/stack up

down: ## Stop the servers that `make up` started
	deploy/local/stack down

status: ## Show which servers run
	deploy/local/stack status

wipe: ## Stop the servers and delete their data (downloads are kept)
	deploy/local/stack wipe

migrate: ## Create topics, keyspace, tables (idempotent)
	cargo run --locked --bin billing -- migrate

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench: bench-core bench-usage bench-billrun bench-payments bench-api ## Run every benchmark

bench-core: ## Invoice assembly throughput of the pure billing core, with its baseline
	cargo bench --locked -p billing-core --bench invoice_assembly

bench-usage: up ## Usage pipeline: bare Kafka consume vs rating end to end, freshness, memory, gateway
	cargo build --release --locked --bin billing && $${CARGO_TARGET_DIR:-target}/release/billing bench-usage

bench-billrun: up ## Bill run: invoices/s from a test-clock advance to the last invoice.finalized, vs core and Cassandra
	cargo build --release --locked --bin billing && $${CARGO_TARGET_DIR:-target}/release/billing bench-billrun

bench-payments: up ## Payments: payments/s from invoice.finalized to PaymentSucceeded (sandbox), vs bare consume; webhooks/s
	cargo build --release --locked --bin billing && $${CARGO_TARGET_DIR:-target}/release/billing bench-payments

bench-api: up ## API: GET invoice and GET usage with a key at increasing concurrency, vs a constant axum handler
	cargo build --release --locked --bin billing && $${CARGO_TARGET_DIR:-target}/release/billing bench-api
