//! `billing ticker` and `billing clock advance`: the billing clock. Billing decisions never read the wall clock;
//! the ticker publishes it, and a test clock moves only when advanced.

use std::sync::Arc;
use std::time::Duration;

use billing_runtime::publish::Publisher;
use billing_runtime::{cql, Settings, Shutdown};
use billing_schemas::lifecycle::{ClockTick, Lifecycle, LifecycleEvent};
use billing_schemas::Encoding;
use chrono::{DateTime, Utc};

/// The wall clock's id, published for every tenant (`tenant_id` `*`).
pub const WALL: &str = "wall";

/// `billing ticker`.
#[derive(clap::Args)]
pub struct TickerArgs {
    /// Time between ticks.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Publish one tick and exit.
    #[arg(long)]
    pub once: bool,
}

/// `billing clock ...`.
#[derive(clap::Subcommand)]
pub enum ClockCommand {
    /// Move a test clock forward and wait until every invoicer partition has billed up to it.
    Advance(AdvanceArgs),
}

/// `billing clock advance`.
#[derive(clap::Args)]
pub struct AdvanceArgs {
    /// Tenant owning the clock.
    #[arg(long)]
    pub tenant: String,
    /// Test clock id.
    #[arg(long)]
    pub clock: String,
    /// New time, RFC 3339 (e.g. 2026-03-01T00:00:00Z); must be later than the clock's current time.
    #[arg(long)]
    pub to: DateTime<Utc>,
    /// How long to wait for the bill runs.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

fn tick(tenant: &str, clock: &str, now: DateTime<Utc>) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: tenant.into(),
        event_id: format!("tick-{tenant}-{clock}-{}", now.timestamp_millis()),
        occurred_at: now,
        payload: Lifecycle::ClockTick(ClockTick {
            clock_id: clock.into(),
            now,
        }),
    }
}

/// Publish the wall clock to every lifecycle partition until shutdown.
pub async fn ticker(settings: Settings, args: TickerArgs, stop: Shutdown) -> anyhow::Result<()> {
    let publisher = Publisher::new(&settings.kafka)?;
    let mut every = tokio::time::interval(args.interval);
    let mut retention = tokio::time::interval(settings.retention.interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = retention.tick(), if !args.once => {
                // Housekeeping, not billing: a failure is logged and tried again at the next interval.
                match billing_store::retention::run(&settings, chrono::Utc::now()).await {
                    Ok(report) => tracing::info!(%report, "retention applied"),
                    Err(e) => tracing::warn!(error = %e, "retention failed; trying again at the next interval"),
                }
            }
            _ = every.tick() => {
                let now = Utc::now();
                publisher
                    .tick_everywhere(&tick("*", WALL, now), Encoding::Avro, settings.kafka.partitions)
                    .await?;
                tracing::info!(%now, "wall clock tick published");
                if args.once {
                    return Ok(());
                }
            }
        }
    }
}

/// Advance a test clock.
pub async fn advance(settings: Settings, args: AdvanceArgs) -> anyhow::Result<()> {
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    let store =
        billing_store::billing::BillingStore::new(session, &settings.cassandra.keyspace).await?;
    let current = store.test_clock(&args.tenant, &args.clock).await?;
    anyhow::ensure!(
        !current.is_empty(),
        "no test clock {:?} for tenant {:?} (create it with POST /v1/test_clocks)",
        args.clock,
        args.tenant
    );
    if let Some(latest) = current.values().max() {
        anyhow::ensure!(
            args.to > *latest,
            "the clock is at {latest}; advance it to a later time than that"
        );
    }
    let publisher = Publisher::new(&settings.kafka)?;
    publisher
        .tick_everywhere(
            &tick(&args.tenant, &args.clock, args.to),
            Encoding::Avro,
            settings.kafka.partitions,
        )
        .await?;
    let deadline = tokio::time::Instant::now() + args.wait;
    loop {
        let at = store.test_clock(&args.tenant, &args.clock).await?;
        let done =
            (0..settings.kafka.partitions).all(|p| at.get(&p).is_some_and(|t| *t >= args.to));
        if done {
            println!(
                "test clock {} of {} is at {}",
                args.clock, args.tenant, args.to
            );
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the invoicer has not billed every partition up to {} within {:?}",
            args.to,
            args.wait
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
