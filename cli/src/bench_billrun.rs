//! `billing bench-billrun`: the bill run's throughput benchmark, with its baselines measured in the same run.
//!
//! In its own topics (prefix), keyspace, ClickHouse database and consumer groups, it publishes a catalog (a count
//! metric, a monthly plan billed in advance with a flat fee and a usage charge, and a plan to upgrade to), creates
//! a test clock at the start of January, starts `billing invoicer` as a child process and lets it fold N customers
//! with one subscription each on that clock. A first advance (one hour) bills January's fees in advance: N
//! invoices, a warm-up reported on its own. Then 10 % of the subscriptions are upgraded on Jan 15, usage for a
//! sample of the customers is produced and rated by `billing rating` (a child process, stopped once its committed
//! offsets reach the end of the usage topic), and the measured phase starts: the clock is advanced past the end of
//! January, and the time from that tick to the last of the N `invoice.finalized` on `billing.invoices` gives the
//! invoices per second end to end. The invoices are then read back and checked (one per customer for Feb 1,
//! numbers gap-free, Σ totals equal to what the core computes).
//!
//! Baselines, in the same run: (a) the pure core assembling the same N invoices in memory, (b) the bare write
//! rate of the same invoice rows to Cassandra (64 in flight, and one at a time). It also reports the invoicer's
//! peak memory (VmHWM) and the CPU used by the invoicer, Cassandra, Kafka and ClickHouse during the measured
//! phase. Everything it created is dropped at the end and its child processes are stopped (SIGTERM, then wait),
//! also on error.

// Rates, latencies and memory figures are measurements, not money: floating point is the right tool here.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::children::{drop_environment, free_addr, met, Children};
use crate::measure::{cpu_snapshot, grouped, scrape, vm_hwm_kib};
use billing_core::aggregation::Aggregate;
use billing_core::invoice::Adjustments;
use billing_core::invoicing::{
    billing_dates, invoice_billing_date, BillingDateInput, ChargeAggregate, InvoiceOutcome,
};
use billing_core::money::RoundingMode;
use billing_core::Currency;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::publish::{ack, Publisher};
use billing_runtime::{Settings, Shutdown};
use billing_schemas::catalog::{Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan};
use billing_schemas::invoice::{Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{
    ClockTick, CustomerCreated, Lifecycle, LifecycleEvent, SubscriptionChanged,
};
use billing_schemas::reference::Reference;
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use billing_store::billing::BillingStore;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;

/// Benchmark options.
#[derive(clap::Args)]
pub struct Args {
    /// Customers, each with one subscription on the bench's test clock: one invoice each in the measured run.
    #[arg(long, default_value_t = 100_000)]
    subscriptions: u32,
    /// Share of the subscriptions upgraded in the middle of the billed period (per cent).
    #[arg(long, default_value_t = 10)]
    upgrade_percent: u32,
    /// Customers that have usage (the first ones), rated before the measured run.
    #[arg(long, default_value_t = 10_000)]
    usage_customers: u32,
    /// Usage events produced (spread over the usage customers and January) and rated before the measured run.
    #[arg(long, default_value_t = 100_000)]
    usage_events: u64,
    /// Partitions of the bench's topics.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Baseline (b): invoice rows written to Cassandra concurrently.
    #[arg(long, default_value_t = 64)]
    cql_concurrency: usize,
    /// Baseline (b): invoice rows written one at a time (a sample; 0 skips it).
    #[arg(long, default_value_t = 5_000)]
    serial_writes: usize,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    timeout_secs: u64,
}

const TENANT: &str = "bench";
const CLOCK: &str = "bench-clock";
/// The bench's own tenants for the bare Cassandra writes (same table, another partition).
const CQL_TENANT: &str = "bench-cql";
const CQL_SERIAL_TENANT: &str = "bench-cql-serial";
const BASIC_FEE: &str = "29.00";
const PRO_FEE: &str = "99.00";
const IN_FLIGHT: usize = 20_000;

/// The issue's floor, end to end.
const TARGET: f64 = 2_000.0;

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .expect("valid date")
}

/// The billed period is January 2026: subscriptions start on Jan 1 (the clock's first time), upgrades take
/// effect on Jan 15, and the measured advance goes to Feb 1, 01:00, one hour past the period's end.
fn period_start() -> DateTime<Utc> {
    at(2026, 1, 1, 0)
}
fn warmup_to() -> DateTime<Utc> {
    at(2026, 1, 1, 1)
}
fn upgrade_at() -> DateTime<Utc> {
    at(2026, 1, 15, 0)
}
fn billing_date() -> DateTime<Utc> {
    at(2026, 2, 1, 0)
}
fn measured_to() -> DateTime<Utc> {
    at(2026, 2, 1, 1)
}

/// Run the benchmark; the bench's data is dropped and its children stopped whatever happens.
pub async fn run(base: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut settings = base;
    settings.kafka.topic_prefix = format!("bench.{id}.");
    settings.kafka.partitions = args.partitions;
    settings.cassandra.keyspace = format!("bench_{id}");
    settings.clickhouse.database = format!("bench_{id}");
    settings.rating.group_id = format!("bench-{id}-rating");
    settings.invoicer.group_id = format!("bench-{id}-invoicer");
    settings.rating.listen = free_addr()?;
    settings.invoicer.listen = free_addr()?;
    println!(
        "bench-billrun {id}: {} subscriptions ({} % upgraded mid-period), {} usage events over {} customers, {} partitions (started {})",
        args.subscriptions,
        args.upgrade_percent,
        args.usage_events,
        args.usage_customers.min(args.subscriptions),
        args.partitions,
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let mut children = Children::default();
    let result = tokio::select! {
        r = phases(&settings, &args, &id, &mut children) => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(children);
    cleanup(&settings, &id).await;
    result
}

fn child_env(s: &Settings) -> Vec<(String, String)> {
    [
        ("BILLING__KAFKA__TOPIC_PREFIX", s.kafka.topic_prefix.clone()),
        ("BILLING__KAFKA__PARTITIONS", s.kafka.partitions.to_string()),
        ("BILLING__CASSANDRA__KEYSPACE", s.cassandra.keyspace.clone()),
        (
            "BILLING__CLICKHOUSE__DATABASE",
            s.clickhouse.database.clone(),
        ),
        ("BILLING__RATING__GROUP_ID", s.rating.group_id.clone()),
        ("BILLING__RATING__LISTEN", s.rating.listen.to_string()),
        ("BILLING__INVOICER__GROUP_ID", s.invoicer.group_id.clone()),
        ("BILLING__INVOICER__LISTEN", s.invoicer.listen.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The workload, shared by what is published and by the in-memory baseline.
struct Workload {
    customers: u64,
    usage_customers: u64,
    usage_events: u64,
    upgrade_percent: u64,
}

impl Workload {
    fn customer_id(c: u64) -> String {
        format!("cus-{c:07}")
    }

    fn subscription_id(c: u64) -> String {
        format!("sub-{c:07}")
    }

    /// Exactly ⌊N × pct / 100⌋ customers, spread evenly.
    fn upgraded(&self, c: u64) -> bool {
        (c + 1) * self.upgrade_percent / 100 != c * self.upgrade_percent / 100
    }

    fn upgrades(&self) -> u64 {
        (0..self.customers).filter(|c| self.upgraded(*c)).count() as u64
    }

    /// Usage events customer `c` has in January.
    fn events_of(&self, c: u64) -> u64 {
        if c >= self.usage_customers {
            return 0;
        }
        self.usage_events / self.usage_customers
            + u64::from(c < self.usage_events % self.usage_customers)
    }

    fn catalog(&self) -> Vec<CatalogEvent> {
        let t0 = period_start();
        let plan = |code: &str, fee: &str, per_call: &str| {
            CatalogEvent::plan(
                TENANT,
                t0,
                Plan {
                    version: 1,
                    effective_from: None,
                    tax_codes: vec![],
                    code: code.into(),
                    name: code.into(),
                    interval: Interval::Monthly,
                    currency: "EUR".into(),
                    amount: fee.into(),
                    pay_in_advance: true,
                    trial_period_days: 0,
                    charges: vec![Charge::on_metric(
                        "calls",
                        "calls",
                        ChargeModel::Standard,
                        &format!(r#"{{"amount":"{per_call}"}}"#),
                    )],
                },
            )
        };
        vec![
            CatalogEvent::metric(TENANT, t0, "calls", Aggregation::Count, None, vec![]),
            plan("basic", BASIC_FEE, "0.01"),
            plan("pro", PRO_FEE, "0.008"),
        ]
    }

    fn subscribed(&self, c: u64) -> [LifecycleEvent; 2] {
        let id = Self::customer_id(c);
        LifecycleEvent::customer_subscribed(
            TENANT,
            CustomerCreated {
                test_clock_id: Some(CLOCK.into()),
                ..CustomerCreated::new(&id, &id, "EUR", "UTC")
            },
            &Self::subscription_id(c),
            "basic",
            period_start(),
        )
    }

    fn upgrade(c: u64) -> LifecycleEvent {
        let sub = Self::subscription_id(c);
        LifecycleEvent {
            tenant_id: TENANT.into(),
            event_id: format!("upgrade-{sub}"),
            occurred_at: upgrade_at(),
            payload: Lifecycle::SubscriptionChanged(SubscriptionChanged {
                subscription_id: sub,
                customer_id: Self::customer_id(c),
                new_plan_code: "pro".into(),
                effective_at: upgrade_at(),
                at_period_end: false,
            }),
        }
    }

    /// Usage event `i`: customer `i mod usage_customers`, a time inside January.
    fn usage(&self, run: &str, i: u64) -> UsageEvent {
        let c = i % self.usage_customers;
        UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("{run}-{i}"),
            customer_id: Self::customer_id(c),
            metric_code: "calls".into(),
            timestamp: period_start()
                + chrono::Duration::seconds(((i * 7919) % (30 * 86_400)) as i64),
            properties: BTreeMap::new(),
        }
    }
}

fn tick(now: DateTime<Utc>) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("tick-{TENANT}-{CLOCK}-{}", now.timestamp_millis()),
        occurred_at: now,
        payload: Lifecycle::ClockTick(ClockTick {
            clock_id: CLOCK.into(),
            now,
        }),
    }
}

/// Publish events with at most `IN_FLIGHT` unacknowledged.
async fn publish_lifecycle(
    publisher: &Publisher,
    events: impl Iterator<Item = LifecycleEvent>,
) -> anyhow::Result<u64> {
    let mut inflight: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut n = 0;
    for ev in events {
        inflight.push_back(publisher.send_lifecycle(&ev, Encoding::Avro)?);
        n += 1;
        if inflight.len() >= IN_FLIGHT {
            ack(inflight.pop_front().expect("non-empty")).await?;
        }
    }
    for d in inflight {
        ack(d).await?;
    }
    Ok(n)
}

/// Figures of the measured phase, printed in the final table.
#[derive(Default)]
struct Figures {
    fold_events: u64,
    fold_s: f64,
    warmup_s: f64,
    measured_s: f64,
    first_invoice_s: f64,
    run_complete_s: f64,
    core_s: f64,
    cql_s: f64,
    cql_serial: Option<(usize, f64)>,
    /// Cassandra CPU milliseconds per invoice: measured run, bare writes.
    cassandra_ms: (f64, f64),
    hwm_mib: f64,
    cpu: Vec<(String, f64)>,
    busy: f64,
}

async fn phases(
    settings: &Settings,
    args: &Args,
    id: &str,
    children: &mut Children,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let n = u64::from(args.subscriptions.max(1));
    let w = Workload {
        customers: n,
        usage_customers: u64::from(args.usage_customers).clamp(1, n),
        usage_events: args.usage_events,
        upgrade_percent: u64::from(args.upgrade_percent.min(100)),
    };
    let upgrades = w.upgrades();
    let mut fig = Figures::default();
    let report = billing_store::migrate::run(settings)
        .await
        .context("migration failed")?;
    println!("migrated: {report}");
    let topics = Topics::new(&settings.kafka);
    let publisher = Publisher::new(&settings.kafka)?;
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let store = BillingStore::new(session, &settings.cassandra.keyspace).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let metrics_url = format!("http://{}/metrics", settings.invoicer.listen);
    let env = child_env(settings);

    // The catalog, and the test clock at the start of the period, before the invoicer starts.
    for ev in w.catalog() {
        publisher.catalog(&ev, Encoding::Json).await?;
    }
    publisher
        .tick_everywhere(&tick(period_start()), Encoding::Avro, args.partitions)
        .await?;
    let invoicer_pid = children.spawn("invoicer", &env, &format!("billrun-{id}"))?;
    wait_clock(&store, args.partitions, period_start(), timeout, children).await?;
    println!(
        "invoicer running; the test clock is at {} on every partition",
        period_start()
    );

    // The customers and their subscriptions, folded live by the invoicer (each is also materialized).
    let t = Instant::now();
    let lifecycle_n = publish_lifecycle(&publisher, (0..n).flat_map(|c| w.subscribed(c))).await?;
    let published_s = t.elapsed().as_secs_f64();
    wait_applied(&http, &metrics_url, lifecycle_n, timeout, children).await?;
    fig.fold_events = lifecycle_n;
    fig.fold_s = t.elapsed().as_secs_f64();
    println!(
        "fold: {lifecycle_n} lifecycle events published in {published_s:.1} s, applied by the invoicer after {:.1} s = {:.0} events/s",
        fig.fold_s,
        lifecycle_n as f64 / fig.fold_s
    );

    // Warm-up: one hour later, January's fees in advance, N invoices for customers never billed before.
    let t = Instant::now();
    publisher
        .tick_everywhere(&tick(warmup_to()), Encoding::Avro, args.partitions)
        .await?;
    let seen = watch_invoices(settings, &topics.invoices, n, timeout, children).await?;
    fig.warmup_s = t.elapsed().as_secs_f64();
    wait_clock(&store, args.partitions, warmup_to(), timeout, children).await?;
    println!(
        "warm-up bill run (Jan 1, fees in advance): {n} invoices published in {:.1} s = {:.0} invoices/s (first after {:.2} s); run complete after {:.1} s",
        fig.warmup_s,
        n as f64 / fig.warmup_s,
        seen.first_s,
        t.elapsed().as_secs_f64()
    );

    // Mid-period upgrades.
    let t = Instant::now();
    let published = publish_lifecycle(
        &publisher,
        (0..n).filter(|c| w.upgraded(*c)).map(Workload::upgrade),
    )
    .await?;
    wait_applied(
        &http,
        &metrics_url,
        lifecycle_n + published,
        timeout,
        children,
    )
    .await?;
    println!(
        "{published} upgrades (basic → pro on {}) applied in {:.1} s",
        upgrade_at(),
        t.elapsed().as_secs_f64()
    );

    // Usage, rated before the measured run.
    let t = Instant::now();
    let producer = kafka::producer(&settings.kafka)?;
    let headers = OwnedHeaders::new().insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(Encoding::Avro.content_type()),
    });
    let mut inflight: VecDeque<DeliveryFuture> = VecDeque::new();
    for i in 0..w.usage_events {
        let ev = w.usage(id, i);
        let payload = encode(&ev, Encoding::Avro)?;
        let key = customer_key(&ev.tenant_id, &ev.customer_id);
        loop {
            let record = FutureRecord::to(&topics.usage)
                .key(&key)
                .payload(&payload)
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(d) => {
                    inflight.push_back(d);
                    break;
                }
                Err((e, _)) => {
                    let Some(d) = inflight.pop_front() else {
                        anyhow::bail!("produce failed: {e}");
                    };
                    ack(d).await?;
                }
            }
        }
        if inflight.len() >= IN_FLIGHT {
            ack(inflight.pop_front().expect("non-empty")).await?;
        }
    }
    for d in inflight {
        ack(d).await?;
    }
    let produced_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    children.spawn("rating", &env, &format!("billrun-{id}"))?;
    let rating_metrics = format!("http://{}/metrics", settings.rating.listen);
    loop {
        children.check_alive()?;
        if group_lag(settings, &topics.usage).await? == 0 {
            break;
        }
        anyhow::ensure!(t.elapsed() < timeout, "rating did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rated_s = t.elapsed().as_secs_f64();
    let m = scrape(&http, &rating_metrics).await.unwrap_or_default();
    let accepted = m
        .get("billing_rating_events_total{outcome=\"accepted\"}")
        .copied()
        .unwrap_or(0.0) as u64;
    children.stop("rating");
    println!(
        "usage: {} events for {} customers produced in {produced_s:.1} s, rated and checkpointed in {rated_s:.1} s; accepted {accepted}; rating stopped",
        w.usage_events, w.usage_customers
    );
    anyhow::ensure!(
        accepted == w.usage_events,
        "rating accepted {accepted} of {} usage events",
        w.usage_events
    );

    // The measured run: the clock passes the end of January; N invoices dated Feb 1.
    let before = cpu_snapshot(&billrun_pids(invoicer_pid), BILLRUN_SERVERS);
    let t = Instant::now();
    publisher
        .tick_everywhere(&tick(measured_to()), Encoding::Avro, args.partitions)
        .await?;
    let seen = watch_invoices(settings, &topics.invoices, 2 * n, timeout, children).await?;
    fig.measured_s = t.elapsed().as_secs_f64();
    fig.first_invoice_s = seen.first_s;
    let after = cpu_snapshot(&billrun_pids(invoicer_pid), BILLRUN_SERVERS);
    wait_clock(&store, args.partitions, measured_to(), timeout, children).await?;
    fig.run_complete_s = t.elapsed().as_secs_f64();
    fig.hwm_mib = vm_hwm_kib(invoicer_pid)? as f64 / 1024.0;
    let wall = fig.measured_s;
    fig.busy = after.machine_busy_share(&before);
    let mut accounted = 0.0;
    for (name, s) in after.process_seconds(&before) {
        if name == "cassandra" {
            fig.cassandra_ms.0 = 1000.0 * s / n as f64;
        }
        accounted += s / wall;
        fig.cpu.push((name, s / wall));
    }
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get()) as f64;
    fig.cpu.push((
        "rest of the machine".to_owned(),
        (fig.busy * cores - accounted).max(0.0),
    ));
    let metrics = scrape(&http, &metrics_url).await.unwrap_or_default();
    println!(
        "measured bill run (Feb 1): {n} invoices published in {wall:.2} s = {:.0} invoices/s (first after {:.2} s); run complete (clock stored everywhere) after {:.2} s; invoicer counts {:.0} finalized",
        n as f64 / wall,
        fig.first_invoice_s,
        fig.run_complete_s,
        metrics
            .get("billing_invoicer_invoices_total{status=\"finalized\"}")
            .copied()
            .unwrap_or(0.0)
    );
    children.stop("invoicer");

    // What was published.
    let published = read_invoices(settings, &topics.invoices, id, timeout).await?;
    anyhow::ensure!(
        published.events == 2 * n,
        "billing.invoices holds {} events, expected {}",
        published.events,
        2 * n
    );

    // (a) The pure core, over the same subscriptions and usage.
    let (views, core_s, core_total) = core_baseline(&w)?;
    fig.core_s = core_s;
    let feb = published
        .totals
        .get(&billing_date())
        .copied()
        .unwrap_or_default();
    let feb_n = published
        .customers
        .get(&billing_date())
        .map_or(0, |c| c.len() as u64);
    let jan_n = published
        .customers
        .get(&period_start())
        .map_or(0, |c| c.len() as u64);
    println!(
        "check: {} invoice.finalized events; Feb 1: {feb_n} (distinct customers), Σ total {feb} (core: {core_total}); Jan 1: {jan_n}; numbers {}",
        published.events,
        if published.gap_free { "1..2N without a gap or a repeat" } else { "NOT gap-free" }
    );
    anyhow::ensure!(
        feb_n == n
            && jan_n == n
            && published.gap_free
            && feb == core_total
            && views.len() as u64 == n,
        "the published invoices do not match the workload"
    );

    // (b) The bare Cassandra writes of the same rows.
    let before = cpu_snapshot(&billrun_pids(invoicer_pid), BILLRUN_SERVERS);
    let (cql_n, cql_s) =
        cql_writes(settings, CQL_TENANT, &views, args.cql_concurrency.max(1)).await?;
    let after = cpu_snapshot(&billrun_pids(invoicer_pid), BILLRUN_SERVERS);
    fig.cql_s = cql_s;
    fig.cassandra_ms.1 = after
        .process_seconds(&before)
        .iter()
        .find(|(name, _)| name == "cassandra")
        .map_or(0.0, |(_, s)| 1000.0 * s / cql_n.max(1) as f64);
    println!(
        "(b) Cassandra: {cql_n} invoice rows (invoices + invoices_by_customer) with {} in flight in {cql_s:.2} s = {:.0} invoices/s; Cassandra CPU {:.3} ms per invoice (measured run: {:.3} ms)",
        args.cql_concurrency.max(1),
        cql_n as f64 / cql_s,
        fig.cassandra_ms.1,
        fig.cassandra_ms.0
    );
    if args.serial_writes > 0 {
        let sample = &views[..args.serial_writes.min(views.len())];
        let (k, s) = cql_writes(settings, CQL_SERIAL_TENANT, sample, 1).await?;
        fig.cql_serial = Some((k, s));
        println!(
            "    one at a time: {k} invoice rows in {s:.2} s = {:.0} invoices/s",
            k as f64 / s
        );
    }
    print_table(args, &w, upgrades, &fig);
    Ok(())
}

fn print_table(args: &Args, w: &Workload, upgrades: u64, f: &Figures) {
    let n = w.customers as f64;
    let e2e = n / f.measured_s;
    let core = n / f.core_s;
    let cql = n / f.cql_s;
    println!();
    println!(
        "bench-billrun: {} subscriptions ({upgrades} upgraded on Jan 15), {} usage events rated for {} customers, {} partitions",
        w.customers, w.usage_events, w.usage_customers, args.partitions
    );
    println!("| Figure | Value | Invoices per second | |");
    println!("|---|---:|---:|---|");
    println!(
        "| (a) baseline: pure core, `invoice_billing_date` of the same invoices in memory (one core) | {:.2} s | {} | |",
        f.core_s,
        grouped(core)
    );
    println!(
        "| (b) baseline: bare Cassandra writes of the same rows, {} in flight | {:.2} s | {} | |",
        args.cql_concurrency.max(1),
        f.cql_s,
        grouped(cql)
    );
    if let Some((k, s)) = f.cql_serial {
        println!(
            "| (b) bare Cassandra writes one at a time ({k} rows) | {s:.2} s | {} | |",
            grouped(k as f64 / s)
        );
    }
    println!(
        "| Fold: lifecycle events applied by the invoicer ({} events) | {:.1} s | {} events/s | |",
        f.fold_events,
        f.fold_s,
        grouped(f.fold_events as f64 / f.fold_s)
    );
    println!(
        "| Warm-up bill run (Jan 1, fees in advance, never billed before) | {:.1} s | {} | |",
        f.warmup_s,
        grouped(n / f.warmup_s)
    );
    println!(
        "| **Bill run end to end: tick past Jan 31 → last `invoice.finalized`** | {:.2} s | **{}** | ≥ {}: {} |",
        f.measured_s,
        grouped(e2e),
        grouped(TARGET),
        met(e2e >= TARGET)
    );
    println!(
        "| … first `invoice.finalized` after the tick | {:.2} s | | |",
        f.first_invoice_s
    );
    println!(
        "| … run complete (test clock stored on every partition) | {:.2} s | {} | |",
        f.run_complete_s,
        grouped(n / f.run_complete_s)
    );
    println!("| End to end / core | | {:.4} | |", e2e / core);
    println!(
        "| End to end / bare Cassandra writes | | {:.3} | |",
        e2e / cql
    );
    println!(
        "| Invoicer peak memory (VmHWM) | {:.0} MiB | | |",
        f.hwm_mib
    );
    println!(
        "| Cassandra CPU per invoice: measured run / bare writes (b) | {:.3} / {:.3} ms | | |",
        f.cassandra_ms.0, f.cassandra_ms.1
    );
    let cpu: Vec<String> = f
        .cpu
        .iter()
        .map(|(name, c)| format!("{name} {c:.2}"))
        .collect();
    println!(
        "| CPU during the measured run, cores (machine busy {:.0} % of {} cores) | {} | | |",
        100.0 * f.busy,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        cpu.join(", ")
    );
}

/// Wait until the invoicer has stored the test clock at `to` (or later) for every partition: the bill run of
/// that tick has finished everywhere.
async fn wait_clock(
    store: &BillingStore,
    partitions: i32,
    to: DateTime<Utc>,
    timeout: Duration,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let clock = store.test_clock(TENANT, CLOCK).await?;
        if (0..partitions).all(|p| clock.get(&p).is_some_and(|t| *t >= to)) {
            return Ok(());
        }
        children.check_alive()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the test clock is not at {to} on every partition after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the invoicer has applied `n` lifecycle events (its counter; ticks are not counted).
async fn wait_applied(
    http: &reqwest::Client,
    url: &str,
    n: u64,
    timeout: Duration,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(http, url).await.unwrap_or_default();
        let applied = m
            .get("billing_invoicer_lifecycle_events_total{outcome=\"applied\"}")
            .copied()
            .unwrap_or(0.0) as u64;
        let refused = m
            .get("billing_invoicer_lifecycle_events_total{outcome=\"refused\"}")
            .copied()
            .unwrap_or(0.0);
        anyhow::ensure!(
            refused == 0.0,
            "the invoicer refused {refused} lifecycle events"
        );
        if applied >= n {
            return Ok(());
        }
        children.check_alive()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the invoicer applied {applied} of {n} lifecycle events after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Seen {
    first_s: f64,
}

/// Watch the end offsets of `topic` (every 50 ms, one consumer) until they sum to `n`; the producer is
/// idempotent, not transactional, so offsets count messages. Returns when the first message beyond the
/// starting count was seen.
async fn watch_invoices(
    settings: &Settings,
    topic: &str,
    n: u64,
    timeout: Duration,
    children: &mut Children,
) -> anyhow::Result<Seen> {
    let brokers = settings.kafka.brokers.clone();
    let partitions = settings.kafka.partitions;
    let topic = topic.to_owned();
    let t0 = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watcher = tokio::task::spawn_blocking(move || -> anyhow::Result<(Option<f64>, u64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let t = Duration::from_secs(10);
        let sum = |c: &BaseConsumer| -> anyhow::Result<u64> {
            let mut s = 0;
            for p in 0..partitions {
                s += c.fetch_watermarks(&topic, p, t)?.1.max(0) as u64;
            }
            Ok(s)
        };
        let start = sum(&consumer)?;
        let mut first = None;
        loop {
            let total = sum(&consumer)?;
            if first.is_none() && total > start {
                first = Some(t0.elapsed().as_secs_f64());
            }
            if total >= n || flag.load(Ordering::Relaxed) {
                return Ok((first, total));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let deadline = t0 + timeout;
    loop {
        if watcher.is_finished() {
            break;
        }
        if let Err(e) = children.check_alive() {
            done.store(true, Ordering::Relaxed);
            return Err(e);
        }
        if Instant::now() >= deadline {
            done.store(true, Ordering::Relaxed);
            let (_, total) = watcher.await??;
            anyhow::bail!("{total} of {n} invoices published after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (first, _) = watcher.await??;
    Ok(Seen {
        first_s: first.unwrap_or(0.0),
    })
}

/// What `billing.invoices` holds.
struct Published {
    events: u64,
    /// Distinct customers per billing date.
    customers: BTreeMap<DateTime<Utc>, HashSet<String>>,
    /// Σ totals per billing date.
    totals: BTreeMap<DateTime<Utc>, Decimal>,
    /// Numbers are 1..=events, each once.
    gap_free: bool,
}

/// Read the whole topic (a fresh group, from the beginning, up to the end offsets).
async fn read_invoices(
    settings: &Settings,
    topic: &str,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<Published> {
    let brokers = settings.kafka.brokers.clone();
    let partitions = settings.kafka.partitions;
    let topic = topic.to_owned();
    let group = format!("bench-{id}-verify");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        let mut expected = 0u64;
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            expected += (high - low).max(0) as u64;
            tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
        }
        consumer.assign(&tpl)?;
        let t0 = Instant::now();
        let mut out = Published {
            events: 0,
            customers: BTreeMap::new(),
            totals: BTreeMap::new(),
            gap_free: false,
        };
        let mut numbers = BTreeSet::new();
        let mut repeated = false;
        while out.events < expected {
            anyhow::ensure!(
                t0.elapsed() < timeout,
                "read {} of {expected} invoice events",
                out.events
            );
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            out.events += 1;
            let ev: InvoiceEvent =
                billing_schemas::decode(m.payload().unwrap_or_default(), kafka::content_type(&m))?;
            if let Invoice::InvoiceFinalized(f) = ev.payload {
                let total: Decimal = f.total.parse()?;
                *out.totals.entry(f.billing_date).or_default() += total;
                out.customers
                    .entry(f.billing_date)
                    .or_default()
                    .insert(f.customer_id.clone());
                let seq: u64 = f
                    .number
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                repeated |= !numbers.insert(seq);
            }
        }
        out.gap_free = !repeated
            && numbers.len() as u64 == out.events
            && numbers.first() == Some(&1)
            && numbers.last() == Some(&out.events);
        Ok(out)
    })
    .await?
}

/// Baseline (a): fold the same catalog and lifecycle in memory, then for every customer do what the bill run
/// computes (billable subscriptions, billing dates up to the measured time, the usage of the closing period,
/// `invoice_billing_date`). Only that loop is timed. Returns the invoices as stored rows (for baseline (b)), the
/// seconds and Σ totals.
fn core_baseline(w: &Workload) -> anyhow::Result<(Vec<InvoiceView>, f64, Decimal)> {
    let mut reference = Reference::default();
    for ev in w.catalog() {
        reference
            .apply_catalog(ev)
            .map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    }
    for c in 0..w.customers {
        for ev in w.subscribed(c) {
            reference
                .apply_lifecycle(ev)
                .map_err(|e| anyhow::anyhow!("lifecycle: {e}"))?;
        }
        if w.upgraded(c) {
            reference
                .apply_lifecycle(Workload::upgrade(c))
                .map_err(|e| anyhow::anyhow!("lifecycle: {e}"))?;
        }
    }
    let ids: Vec<String> = (0..w.customers).map(Workload::customer_id).collect();
    let currency = Currency::parse("EUR")?;
    let date = billing_date();
    let now = measured_to();
    let adjustments = Adjustments {
        coupons: &[],
        taxes: &[],
        customer_tax_exempt: false,
        credit_notes: &[],
        prepaid_credits: Decimal::ZERO,
    };
    let mut outcomes: Vec<InvoiceOutcome> = Vec::with_capacity(ids.len());
    let t = Instant::now();
    for (c, id) in ids.iter().enumerate() {
        let cust = reference.customer(TENANT, id).context("customer folded")?;
        let tz = cust.tz();
        let mut subs = Vec::with_capacity(cust.subscriptions.len());
        for s in &cust.subscriptions {
            let mut b = reference
                .billable(TENANT, s, currency)
                .map_err(|e| anyhow::anyhow!("billable: {e}"))?;
            let dates = billing_dates(&b, tz, now)?;
            anyhow::ensure!(dates.contains(&date), "{id} is not billed on {date}");
            let k = w.events_of(c as u64);
            if k > 0 {
                b.aggregates.push(ChargeAggregate {
                    charge: "calls".into(),
                    group: None,
                    aggregate: Aggregate {
                        units: Decimal::from(k),
                        events_count: k,
                        event_values: Vec::new(),
                    },
                });
            }
            subs.push(b);
        }
        let outcome = invoice_billing_date(&BillingDateInput {
            currency,
            rounding: RoundingMode::HalfUp,
            timezone: tz,
            billing_date: date,
            subscriptions: &subs,
            extra_lines: &[],
            adjustments,
        })?
        .with_context(|| format!("{id} has no invoice on {date}"))?;
        outcomes.push(outcome);
    }
    let secs = t.elapsed().as_secs_f64();
    let total = outcomes.iter().map(|o| o.invoice.total).sum();
    println!(
        "(a) core: {} invoices assembled in {secs:.3} s = {:.0} invoices/s (one core), Σ total {total}",
        outcomes.len(),
        outcomes.len() as f64 / secs
    );
    let views = ids
        .iter()
        .zip(&outcomes)
        .enumerate()
        .map(|(k, (id, o))| view(id, k as u64 + w.customers + 1, o))
        .collect();
    Ok((views, secs, total))
}

/// The stored row of a finalized invoice, as the invoicer writes it.
fn view(customer: &str, number: u64, o: &InvoiceOutcome) -> InvoiceView {
    let date = billing_date();
    let mut v = InvoiceView::from_outcome(
        billing_store::invoices::InvoiceHead {
            tenant: TENANT,
            customer_id: customer,
            test_clock_id: Some(CLOCK.into()),
            currency: "EUR",
            billing_date: date,
            finalizes_at: date,
            status: InvoiceStatus::Finalized,
            issued_at: Some(date),
            net_terms: chrono::Duration::zero(),
            tax_names: &Default::default(),
            tax_note: None,
        },
        o,
    );
    v.number = Some(billing_store::invoice_numbers::format_number(
        "BENCH",
        6,
        number as i64,
    ));
    v
}

/// Baseline (b): write each invoice's row and its customer's list entry (the two rows every stored invoice has)
/// with plain prepared inserts, `concurrency` invoices in flight; returns (rows, seconds). The JSON body is
/// encoded inside the timed loop, as a writer would.
async fn cql_writes(
    settings: &Settings,
    tenant: &'static str,
    views: &[InvoiceView],
    concurrency: usize,
) -> anyhow::Result<(usize, f64)> {
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let ks = &settings.cassandra.keyspace;
    let row = session
        .prepare(format!(
            "INSERT INTO {ks}.invoices (tenant_id, invoice_id, customer_id, status, number, billing_date, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
    let index = session
        .prepare(format!(
            "INSERT INTO {ks}.invoices_by_customer (tenant_id, customer_id, invoice_id) VALUES (?, ?, ?)"
        ))
        .await?;
    let views: Arc<Vec<InvoiceView>> = Arc::new(views.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (session, row, index, views, next) = (
            session.clone(),
            row.clone(),
            index.clone(),
            views.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(inv) = views.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let body = serde_json::to_string(inv)?;
                let number = inv.number.clone().unwrap_or_default();
                let a = session.execute_unpaged(
                    &row,
                    (
                        tenant,
                        &inv.invoice_id,
                        &inv.customer_id,
                        inv.status.as_str(),
                        &number,
                        inv.billing_date,
                        &body,
                    ),
                );
                let b =
                    session.execute_unpaged(&index, (tenant, &inv.customer_id, &inv.invoice_id));
                let (a, b) = tokio::join!(a, b);
                a?;
                b?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((views.len(), t.elapsed().as_secs_f64()))
}

/// Σ (end − committed) over the partitions of `topic` for rating's group.
async fn group_lag(settings: &Settings, topic: &str) -> anyhow::Result<i64> {
    let brokers = settings.kafka.brokers.clone();
    let group = settings.rating.group_id.clone();
    let partitions = settings.kafka.partitions;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        let mut lag = 0;
        for p in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            let c = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            lag += (high - c).max(0);
        }
        Ok(lag)
    })
    .await?
}

/// The processes whose CPU time the bill-run figures show: the invoicer and this process.
fn billrun_pids(invoicer: u32) -> [(&'static str, u32); 2] {
    [
        ("invoicer", invoicer),
        ("bench (this process)", std::process::id()),
    ]
}

/// The stack's servers, found by their command lines (read only).
const BILLRUN_SERVERS: &[(&str, &str)] = &[
    ("cassandra", "CassandraDaemon"),
    ("kafka", "kafka.Kafka"),
    ("clickhouse", "clickhouse-server"),
];

/// Drop the bench's keyspace, ClickHouse database, topics and consumer groups.
async fn cleanup(settings: &Settings, id: &str) {
    let verify = format!("bench-{id}-verify");
    let groups = [
        settings.rating.group_id.as_str(),
        settings.invoicer.group_id.as_str(),
        verify.as_str(),
    ];
    drop_environment(
        settings,
        std::slice::from_ref(&settings.kafka.topic_prefix),
        &groups,
    )
    .await;
    println!("cleaned up: keyspace, database, topics and groups of bench-billrun {id}");
}
