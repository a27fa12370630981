//! `billing`: one binary for every service and tool. See `billing --help`.

mod analytics;
mod bench;
mod bench_api;
mod bench_billrun;
mod bench_payments;
mod children;
mod clock;
mod demo;
mod keys;
mod measure;
mod pricing;

use std::path::PathBuf;

use anyhow::Context;
use billing_runtime::{shutdown, telemetry, Settings};
use clap::{Parser, Subcommand};

/// Every service of the binary allocates per message; mimalloc's thread-local free lists cost less per allocation
/// than glibc's malloc (measured in docs/benchmarks.md, "Rating").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "billing", version, about = "Streaming billing pipeline")]
struct Cli {
    /// TOML file layered over the defaults (then BILLING__SECTION__KEY environment variables).
    #[arg(long, global = true, env = "BILLING_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create Kafka topics, the CQL keyspace and tables, and the ClickHouse database and tables (idempotent).
    Migrate,
    /// Run the rating service.
    Rating,
    /// Run the query API.
    QueryApi,
    /// Run the ingest gateway.
    Ingest,
    /// Run the invoicer.
    Invoicer,
    /// Run the payments service.
    Payments,
    /// Run the webhooks dispatcher: signed webhook events to each tenant's endpoints, with retries.
    Webhooks,
    /// Migrate, run rating and the query API, produce a demo workload and show where to look.
    Demo(demo::Args),
    /// Usage pipeline benchmark: bare Kafka consume vs rating end to end, freshness, memory, gateway.
    BenchUsage(bench::Args),
    /// Bill run benchmark: invoices/s from a test-clock advance to the last invoice.finalized, with baselines.
    BenchBillrun(bench_billrun::Args),
    /// API benchmark: GET invoice and GET usage with a valid key at increasing concurrency, beside a constant axum
    /// handler.
    BenchApi(bench_api::Args),
    /// Payments benchmark: payments/s from invoice.finalized to PaymentSucceeded (sandbox), webhook deliveries/s.
    BenchPayments(bench_payments::Args),
    /// Publish the wall clock to every lifecycle partition (default every minute): what bills wall-clock customers.
    Ticker(clock::TickerArgs),
    /// Test clocks.
    #[command(subcommand)]
    Clock(clock::ClockCommand),
    /// Data retention (`[retention]` settings): drop expired usage-event partitions, set the dead-letter topics'
    /// retention and the webhook delivery logs' TTL. Invoices and credit notes are never deleted.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Tenants: create one, change its rate limits, show it with its keys.
    #[command(subcommand)]
    Tenant(keys::TenantCommand),
    /// API keys: create (printed once), list, revoke.
    #[command(subcommand, name = "api-key")]
    ApiKey(keys::ApiKeyCommand),
    /// Analytics: an SVG chart of a tenant's MRR (the reports themselves: `reports/*.sql`, `GET /v1/analytics/*`).
    #[command(subcommand)]
    Analytics(analytics::AnalyticsCommand),
    /// Offline pricing: evaluate a charge or preview an invoice from a JSON file.
    #[command(subcommand)]
    Pricing(pricing::Command),
}

/// `billing retention`.
#[derive(Subcommand)]
enum RetentionCommand {
    /// Apply the retention settings now (the ticker also does, every `retention.interval`).
    Run,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Pricing is pure and offline: no config, no runtime, JSON errors.
    if let Command::Pricing(cmd) = &cli.command {
        return pricing::run(cmd);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            for problem in &e.0 {
                eprintln!("config error: {problem}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&settings.telemetry);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(serve(cli.command, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(command: Command, settings: Settings) -> anyhow::Result<()> {
    let stop = shutdown::on_signals();
    match command {
        Command::Migrate => {
            let report = billing_store::migrate::run(&settings)
                .await
                .context("migration failed")?;
            println!("migrated: {report}");
            Ok(())
        }
        Command::Rating => billing_rating::run(settings, stop).await,
        Command::QueryApi => billing_query_api::run(settings, stop, |_| {}).await,
        Command::Ingest => billing_ingest::run(settings, stop, |_| {}).await,
        Command::Invoicer => billing_invoicer::run(settings, stop).await,
        Command::Payments => billing_payments::run(settings, stop).await,
        Command::Webhooks => billing_webhooks::run(settings, stop).await,
        Command::Ticker(args) => clock::ticker(settings, args, stop).await,
        Command::Clock(clock::ClockCommand::Advance(args)) => clock::advance(settings, args).await,
        Command::Retention(RetentionCommand::Run) => {
            let report = billing_store::retention::run(&settings, chrono::Utc::now())
                .await
                .context("retention failed")?;
            println!("retention: {report}");
            Ok(())
        }
        Command::Tenant(cmd) => keys::tenant(settings, cmd).await,
        Command::ApiKey(cmd) => keys::api_key(settings, cmd).await,
        Command::Analytics(cmd) => analytics::run(settings, cmd).await,
        Command::Demo(args) => demo::run(settings, args, stop).await,
        Command::BenchUsage(args) => bench::run(settings, args, stop).await,
        Command::BenchBillrun(args) => bench_billrun::run(settings, args, stop).await,
        Command::BenchApi(args) => bench_api::run(settings, args, stop).await,
        Command::BenchPayments(args) => bench_payments::run(settings, args, stop).await,
        Command::Pricing(_) => unreachable!("handled before the runtime starts"),
    }
}
