//! `billing bench-usage`: the usage pipeline's throughput benchmark, with its baseline measured in the same run.
//!
//! In its own topics (prefix), keyspace, ClickHouse database and consumer groups, it publishes a catalog and
//! subscribes the customers, produces N usage events, then measures:
//! (a) a bare rdkafka consumer reading the N events (the baseline), (b) rating as a separate process until its
//! committed offsets reach the end of the topic (offsets are committed only after the writes are durable), with a
//! correctness check, (c) b/a, (d) produce-ack → visible-in-the-API latency, (e) rating's peak memory (VmHWM) and
//! (f) the ingest gateway's throughput for batches of 1,000; with `--restart-customers N`, before (f), (r) rating's
//! restart over N more customers' lifecycle history. Everything it created is dropped at the end and its
//! child processes are stopped (SIGTERM, then wait), also on error.

// Rates, latencies and memory figures are measurements, not money: floating point is the right tool here.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::children::{drop_environment, free_addr, met, Children};
use crate::measure::{scrape, vm_hwm_kib};
use billing_runtime::kafka::{self, Topics};
use billing_runtime::publish::{ack, Publisher};
use billing_runtime::{Settings, Shutdown};
use billing_schemas::catalog::{Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan};
use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Benchmark options.
#[derive(clap::Args)]
pub struct Args {
    /// Customers (all created and subscribed before any usage).
    #[arg(long, default_value_t = 10_000)]
    customers: u32,
    /// Usage events produced before rating starts.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Consecutive events of the bulk workload that go to one customer before it moves to the next: event *i* goes
    /// to customer (*i* / `burst`) mod `customers`. 1 (the default) spreads consecutive events over every customer;
    /// `--events` / `--customers` sends each customer all its events together.
    #[arg(long, default_value_t = 1)]
    burst: u64,
    /// Partitions of the bench's topics.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Freshness probe: events per second.
    #[arg(long, default_value_t = 1_000)]
    freshness_rate: u32,
    /// Freshness probe: one event in this many is followed until the API shows it, so that the probe's own reads
    /// do not load the machine more than its users would.
    #[arg(long, default_value_t = 10)]
    freshness_sample: u32,
    /// Freshness probe: how the followed events are read (see `FreshnessPoll`).
    #[arg(long, value_enum, default_value_t = FreshnessPoll::Oldest)]
    freshness_poll: FreshnessPoll,
    /// Freshness probe: seconds of production.
    #[arg(long, default_value_t = 10)]
    freshness_secs: u32,
    /// Gateway: batches of 1,000 events posted in total.
    #[arg(long, default_value_t = 200)]
    gateway_batches: u32,
    /// Gateway: concurrent client tasks.
    #[arg(long, default_value_t = 4)]
    gateway_clients: usize,
    /// Restart at scale (r, before the gateway): this many more customers, each created, subscribed and paused (three lifecycle
    /// events), then rating started again with one usage event for each of 1,000 of them; 0 skips the phase.
    #[arg(long, default_value_t = 0)]
    restart_customers: u64,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

/// How the freshness probe finds out that a followed event shows in the API. Either way an event's figure is the
/// time from its produce ack to the end of the first read that saw it, so it is never below the true latency.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FreshnessPoll {
    /// Every 10 ms only the oldest followed event not seen yet is read; when it shows, every other one not seen
    /// yet is read once, concurrently. A checkpoint makes everything it covers visible at once, so the younger
    /// events are mostly seen by that sweep (an event that showed before the oldest did is counted from the sweep:
    /// later than it showed, never earlier). About 100 reads a second plus one per followed event.
    Oldest,
    /// Every followed event is read every 10 ms until it shows (the probe of the runs until 2026-12-03): its
    /// reads grow with freshness itself (about 800 a second at p50 150 ms), and on two cores the API and Cassandra
    /// serving them take CPU from the pipeline being measured.
    Each,
}

const TENANT: &str = "bench";
const IN_FLIGHT: usize = 50_000;
const UNIQUE_USERS: u64 = 50;

/// Targets from the design brief.
const RATING_TARGET: f64 = 100_000.0;
const FRESHNESS_P99_TARGET_MS: f64 = 250.0;
const GATEWAY_TARGET: f64 = 20_000.0;
const MEMORY_TARGET_MIB: f64 = 512.0;
const RESTART_TARGET_S: f64 = 15.0;
/// Usage events rated after each restart of (r).
const PROBES: u64 = 1_000;

/// Run the benchmark; the bench's data is dropped and its children stopped whatever happens.
pub async fn run(base: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut settings = base;
    settings.kafka.topic_prefix = format!("bench.{id}.");
    settings.kafka.partitions = args.partitions;
    settings.cassandra.keyspace = format!("bench_{id}");
    settings.clickhouse.database = format!("bench_{id}");
    settings.rating.group_id = format!("bench-{id}-rating");
    settings.rating.listen = free_addr()?;
    settings.query_api.listen = free_addr()?;
    settings.ingest.listen = free_addr()?;
    println!(
        "bench-usage {id}: {} customers, {} events, {} partitions (started {})",
        args.customers,
        args.events,
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
        ("BILLING__QUERY_API__LISTEN", s.query_api.listen.to_string()),
        ("BILLING__INGEST__LISTEN", s.ingest.listen.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn customer_id(c: u64) -> String {
    format!("cus-{c:06}")
}

/// Events the bulk workload gives customer `c`: block *j* of `burst` events (the last one maybe shorter) goes to
/// customer *j* mod `customers`.
fn bulk_events_of(c: u64, n: u64, customers: u64, burst: u64) -> u64 {
    let (blocks, rest) = (n / burst, n % burst);
    let full = blocks / customers + u64::from(c < blocks % customers);
    full * burst + if blocks % customers == c { rest } else { 0 }
}

/// The start of the previous calendar month: bulk usage falls in it (20 days, all in the past whatever today is),
/// the freshness probe in the current month, so each probe's expected count is independent of the bulk.
fn month_start() -> DateTime<Utc> {
    use chrono::Datelike;
    let now = Utc::now();
    let (y, m) = if now.month() == 1 {
        (now.year() - 1, 12)
    } else {
        (now.year(), now.month() - 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// Bulk event `i`: customer `(i / burst) mod customers`, one of three metrics, event time inside the previous month.
fn bulk_event(run: &str, i: u64, customers: u64, burst: u64) -> UsageEvent {
    let c = (i / burst) % customers;
    let (metric, props) = match i % 3 {
        0 => (
            "api_calls",
            BTreeMap::from([("value".to_owned(), format!("{}.25", i % 7))]),
        ),
        1 => ("requests", BTreeMap::new()),
        _ => (
            "active_users",
            BTreeMap::from([("user".to_owned(), format!("u{}", i % UNIQUE_USERS))]),
        ),
    };
    UsageEvent {
        tenant_id: TENANT.into(),
        event_id: format!("{run}-{i}"),
        customer_id: customer_id(c),
        metric_code: metric.into(),
        timestamp: month_start() + chrono::Duration::seconds(((i * 7919) % (20 * 86_400)) as i64),
        properties: props,
    }
}

async fn phases(
    settings: &Settings,
    args: &Args,
    id: &str,
    children: &mut Children,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let report = billing_store::migrate::run(settings)
        .await
        .context("migration failed")?;
    println!("migrated: {report}");
    let topics = Topics::new(&settings.kafka);
    let producer = kafka::producer(&settings.kafka)?;
    let customers = u64::from(args.customers.max(1));
    let burst = args.burst.max(1);

    // Reference data, then wait until it is readable.
    let t = Instant::now();
    let (catalog_n, lifecycle_n) =
        publish_reference(&Publisher::new(&settings.kafka)?, customers).await?;
    wait_for_end(settings, &topics.catalog, catalog_n, timeout).await?;
    wait_for_end(settings, &topics.lifecycle, lifecycle_n, timeout).await?;
    println!(
        "reference data: {catalog_n} catalog + {lifecycle_n} lifecycle events readable in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The bulk usage.
    let t = Instant::now();
    let run_id = id.to_owned();
    let mut inflight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(IN_FLIGHT);
    let headers = OwnedHeaders::new().insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(Encoding::Avro.content_type()),
    });
    for i in 0..args.events {
        let ev = bulk_event(&run_id, i, customers, burst);
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
                    // Queue full: wait for the oldest delivery, then retry.
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
    let produce_s = t.elapsed().as_secs_f64();
    wait_for_end(settings, &topics.usage, args.events, timeout).await?;
    println!(
        "produced {} usage events (Avro) in {produce_s:.1} s = {:.0} events/s",
        args.events,
        args.events as f64 / produce_s
    );

    // (a) Baseline: a bare consumer reading the topic from the beginning in a fresh group.
    let (base_total, base_steady) =
        bare_consume(settings, &topics.usage, args.events, id, timeout).await?;
    let base_rate = args.events as f64 / base_steady;
    println!(
        "(a) bare rdkafka consume: {} events in {base_steady:.2} s from first message = {base_rate:.0} events/s ({:.2} s including group join)",
        args.events, base_total
    );

    // (b) rating as a separate process, started after the events are in the topic.
    let env = child_env(settings);
    // The benchmark's key: limits far above what it sends, so that it measures the pipeline, not its own quota.
    let key = crate::keys::admin_key(settings, TENANT, crate::keys::unlimited()).await?;
    let cpu_before = stack_cpu();
    let t0 = Instant::now();
    let rating_pid = children.spawn("rating", &env, id)?;
    let metrics_url = format!("http://{}/metrics", settings.rating.listen);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(crate::keys::bearer_headers(&key)?)
        .build()?;
    let mut first_consumed: Option<Duration> = None;
    let deadline = t0 + timeout;
    loop {
        if let Some(status) = children.exited("rating") {
            anyhow::bail!("rating exited early: {status}");
        }
        if first_consumed.is_none() {
            if let Ok(m) = scrape(&http, &metrics_url).await {
                let consumed: f64 = m
                    .iter()
                    .filter(|(k, _)| k.starts_with("billing_rating_events_total{"))
                    .map(|(_, v)| v)
                    .sum();
                if consumed > 0.0 {
                    first_consumed = Some(t0.elapsed());
                }
            }
        }
        let lag = group_lag(settings, &topics.usage).await?;
        if lag == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rating did not catch up: lag {lag}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rating_total = t0.elapsed().as_secs_f64();
    let rating_cpu = cpu_seconds(rating_pid).unwrap_or(0.0);
    let cpu_after = stack_cpu();
    let first = first_consumed.unwrap_or_default().as_secs_f64();
    let rating_rate = args.events as f64 / rating_total;
    let rating_steady = args.events as f64 / (rating_total - first).max(1e-9);
    let m = scrape(&http, &metrics_url).await.unwrap_or_default();
    let metric = |k: &str| m.get(k).copied().unwrap_or(0.0);
    println!(
        "(b) rating end to end (committed = end offsets): {} events in {rating_total:.2} s from process start = {rating_rate:.0} events/s; \
         {:.2} s from first consumed (seen at +{first:.2} s) = {rating_steady:.0} events/s",
        args.events,
        rating_total - first
    );
    let (ck_n, ck_sum) = (
        metric("billing_rating_checkpoint_seconds_count"),
        metric("billing_rating_checkpoint_seconds_sum"),
    );
    println!(
        "    checkpoints: {ck_n:.0}, {ck_sum:.2} s in total ({:.0} % of the run), {:.0} ms each on average; outcomes: accepted {:.0}, rejected {:.0}, replayed {:.0}",
        100.0 * ck_sum / rating_total,
        1000.0 * ck_sum / ck_n.max(1.0),
        metric("billing_rating_events_total{outcome=\"accepted\"}"),
        metric("billing_rating_events_total{outcome=\"rejected\"}"),
        metric("billing_rating_events_total{outcome=\"replayed\"}"),
    );
    // Who used the two cores meanwhile: rating, and the stack's servers (0 for one not found on this machine).
    let stack: Vec<String> = cpu_after
        .iter()
        .map(|(name, after)| {
            let before = cpu_before.get(name).copied().unwrap_or(0.0);
            format!("{name} {:.2} s", after - before)
        })
        .collect();
    println!(
        "    CPU time during the run ({rating_total:.2} s of wall time on {} cores): rating {rating_cpu:.2} s, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        stack.join(", ")
    );
    let step = |name: &str| {
        metric(&format!(
            "billing_rating_checkpoint_step_seconds_sum{{step=\"{name}\"}}"
        ))
    };
    println!(
        "    checkpoint steps: dead letters {:.2} s, ClickHouse {:.2} s, ScyllaDB {:.2} s; per checkpoint {:.0} events and {:.0} customers on average",
        step("dead_letters"),
        step("clickhouse"),
        step("scylla"),
        metric("billing_rating_checkpoint_events_sum") / ck_n.max(1.0),
        metric("billing_rating_checkpoint_customers_sum") / ck_n.max(1.0),
    );
    let waited = |on: &str| {
        metric(&format!(
            "billing_rating_store_wait_seconds_total{{on=\"{on}\"}}"
        ))
    };
    println!(
        "    rating's consumer loop waited on the store: customer loads {:.2} s, the checkpoint in flight {:.2} s; \
         on reference barriers: {:.0}, {:.2} s",
        waited("loads"),
        waited("checkpoint"),
        metric("billing_rating_reference_barrier_seconds_count"),
        metric("billing_rating_reference_barrier_seconds_sum"),
    );
    println!(
        "    target ≥ {RATING_TARGET:.0} events/s sustained: {}",
        met(rating_rate >= RATING_TARGET)
    );
    // (c)
    println!(
        "(c) rating / bare consume: {:.3} (from process start), {:.3} (from first consumed)",
        rating_rate / base_rate,
        rating_steady / base_rate
    );

    // Correctness.
    let accepted = metric("billing_rating_events_total{outcome=\"accepted\"}") as u64;
    let stored = stored_events_count(settings, customers).await?;
    println!(
        "    correctness: Σ events_count in usage_aggregates = {stored}, accepted = {accepted}, produced = {}: {}",
        args.events,
        if stored == accepted && accepted == args.events { "equal" } else { "MISMATCH" }
    );
    let (customer_writes, scylla_steps) = (
        metric("billing_rating_checkpoint_customers_sum").max(1.0),
        step("scylla"),
    );
    children.spawn("query-api", &env, id)?;
    let api = format!("http://{}", settings.query_api.listen);
    wait_http_ok(&http, &format!("{api}/health"), timeout).await?;
    let at = (month_start() + chrono::Duration::days(15)).to_rfc3339();
    let mut spot_ok = 0;
    let spot: Vec<u64> = (0..20).map(|k| (k * 7_919) % customers).collect();
    for &c in &spot {
        let got = api_events(&http, &api, &customer_id(c), &at).await?;
        let want = bulk_events_of(c, args.events, customers, burst);
        if got == want {
            spot_ok += 1;
        } else {
            println!(
                "    API spot check: {} has {got} events, expected {want}",
                customer_id(c)
            );
        }
    }
    println!(
        "    API spot check: {spot_ok}/{} customers have exactly their events",
        spot.len()
    );
    anyhow::ensure!(
        stored == args.events && spot_ok == spot.len(),
        "rated totals do not match the workload"
    );

    // (d) Freshness.
    let before = scrape(&http, &metrics_url).await.unwrap_or_default();
    let probe_started = Instant::now();
    let (lat, reads) = freshness(args, &topics, &producer, &http, &api, customers).await?;
    let probe_s = probe_started.elapsed().as_secs_f64();
    let after = scrape(&http, &metrics_url).await.unwrap_or_default();
    if lat.is_empty() {
        anyhow::bail!("no freshness sample");
    }
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "(d) freshness (produce ack → visible in the API, {} of {} events at {}/s followed): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; target p99 < {FRESHNESS_P99_TARGET_MS:.0} ms: {}",
        lat.len(),
        u64::from(args.freshness_rate) * u64::from(args.freshness_secs),
        args.freshness_rate,
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
        met(pct(0.99) < FRESHNESS_P99_TARGET_MS)
    );
    println!(
        "    the probe's own usage reads ({}): {reads} in {probe_s:.1} s = {:.0}/s",
        match args.freshness_poll {
            FreshnessPoll::Oldest => "--freshness-poll oldest: the oldest followed event not seen yet each 10 ms, the rest once when it shows",
            FreshnessPoll::Each => "--freshness-poll each: every followed event each 10 ms until it shows",
        },
        reads as f64 / probe_s
    );
    println!("    {}", during_probe(&before, &after));

    // (e) Peak memory of rating.
    let hwm_mib = vm_hwm_kib(rating_pid)? as f64 / 1024.0;
    let resident_bound_mib = settings.rating.max_resident_bytes as f64 / f64::from(1 << 20);
    println!(
        "(e) rating peak memory (VmHWM): {hwm_mib:.0} MiB at {customers} customers; target ≤ {MEMORY_TARGET_MIB:.0} MiB: {}; \
         under rating.max_resident_bytes ({resident_bound_mib:.0} MiB): {}",
        met(hwm_mib <= MEMORY_TARGET_MIB),
        if hwm_mib <= resident_bound_mib { "yes" } else { "NO" },
    );
    let m = scrape(&http, &metrics_url).await.unwrap_or_default();
    let value = |k: &str| m.get(k).copied().unwrap_or(0.0);
    println!(
        "    rating totals: {:.0} checkpoints, {:.2} s checkpointing; {:.0} customers cached, their usage {:.1} MiB by estimate (rating.max_cached_bytes); \
         {:.0} customers evicted; resident memory at the last checkpoint {:.0} MiB",
        value("billing_rating_checkpoint_seconds_count"),
        value("billing_rating_checkpoint_seconds_sum"),
        value("billing_rating_cached_customers"),
        value("billing_rating_cached_bytes") / f64::from(1 << 20),
        value("billing_rating_evicted_customers_total"),
        value("billing_rating_resident_bytes") / f64::from(1 << 20),
    );
    // The store alone: rating's customer loads, then its checkpoint writes, without rating (after the freshness
    // probe, which the writes' compactions would disturb).
    let store_alone = store_alone(settings, customers, customer_writes, args.events).await?;
    println!(
        "    ScyllaDB alone: {} customers loaded (ids, aggregates, unique values) in {:.2} s = {:.0} loads/s; \
         {} customer writes like rating's ({:.0} ids each) in {:.2} s = {:.0} writes/s, so rating's {customer_writes:.0} \
         checkpoint writes need ≥ {:.2} s of the store (rating's ScyllaDB steps took {:.2} s)",
        customers,
        store_alone.load_s,
        customers as f64 / store_alone.load_s,
        store_alone.writes,
        store_alone.ids_per_write,
        store_alone.write_s,
        store_alone.writes as f64 / store_alone.write_s,
        customer_writes * store_alone.write_s / store_alone.writes as f64,
        scylla_steps,
    );
    // The gateway is measured alone on the machine.
    children.stop("rating");
    children.stop("query-api");
    if args.restart_customers > 0 {
        restart_at_scale(settings, args, id, children, &producer, &http).await?;
    }

    // (f) Ingest gateway.
    children.spawn("ingest", &env, id)?;
    let ingest = format!("http://{}", settings.ingest.listen);
    wait_http_ok(&http, &format!("{ingest}/health"), timeout).await?;
    let (accepted, secs) = gateway(args, &ingest, &key, customers, id).await?;
    let gw_rate = accepted as f64 / secs;
    println!(
        "(f) ingest gateway: {accepted} events accepted in {} batches of 1,000 from {} clients in {secs:.2} s = {gw_rate:.0} events/s; target ≥ {GATEWAY_TARGET:.0}: {}",
        args.gateway_batches,
        args.gateway_clients,
        met(gw_rate >= GATEWAY_TARGET)
    );
    children.stop("ingest");
    Ok(())
}

/// (r) Rating's restart with a long reference history: `restart_customers` more customers (three lifecycle events
/// each) are published, 1,000 usage events for some of them, then rating is started again; measured: from its
/// start until its committed offsets cover those events (it has read the whole reference history first), and its
/// peak memory. Then again, with 1,000 more usage events, from the snapshot of the lifecycle state the first start
/// wrote.
async fn restart_at_scale(
    settings: &Settings,
    args: &Args,
    id: &str,
    children: &mut Children,
    producer: &rdkafka::producer::FutureProducer,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let topics = Topics::new(&settings.kafka);
    let publisher = Publisher::with_producer(producer.clone(), topics.clone());
    let n = args.restart_customers;
    let start = month_start();
    let t = Instant::now();
    let mut inflight = VecDeque::with_capacity(IN_FLIGHT);
    for c in 0..n {
        let customer = format!("rst-{c:07}");
        let subscription = format!("sub-{customer}");
        let [created, subscribed] = LifecycleEvent::customer_subscribed(
            TENANT,
            CustomerCreated::new(&customer, &customer, "EUR", "UTC"),
            &subscription,
            "bench",
            start,
        );
        let paused = LifecycleEvent::subscription_paused(
            TENANT,
            &customer,
            &subscription,
            start + chrono::Duration::days(2),
        );
        for ev in [created, subscribed, paused] {
            inflight.push_back(publisher.send_lifecycle(&ev, Encoding::Avro)?);
            if inflight.len() >= IN_FLIGHT {
                ack(inflight.pop_front().expect("non-empty")).await?;
            }
        }
    }
    for d in inflight.drain(..) {
        ack(d).await?;
    }
    let lifecycle_total: i64 = end_offsets(&settings.kafka.brokers, &topics.lifecycle)?
        .iter()
        .map(|(_, high)| high)
        .sum();
    println!(
        "(r) restart at scale: {} lifecycle events for {n} more customers published in {:.1} s; {lifecycle_total} in the topic",
        3 * n,
        t.elapsed().as_secs_f64()
    );
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let snapshots = billing_store::reference_snapshots::ReferenceSnapshots::new(
        session,
        &settings.cassandra.keyspace,
    )
    .await?;
    let snapshot_name = billing_store::reference_snapshots::rating_snapshot_name(&topics.lifecycle);
    // Twice: the first start folds the whole topic and writes a snapshot of what it folded; the second reads the
    // snapshot and only what follows it (nothing here).
    for run in ["from the topic's start", "from the snapshot"] {
        produce_probes(producer, &topics, id, run, n).await?;
        let env = child_env(settings);
        let t0 = Instant::now();
        let pid = children.spawn("rating", &env, id)?;
        loop {
            if let Some(status) = children.exited("rating") {
                anyhow::bail!("rating exited early: {status}");
            }
            if group_lag(settings, &topics.usage).await? == 0 {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < timeout,
                "rating did not catch up after its restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let restart_s = t0.elapsed().as_secs_f64();
        let hwm_mib = vm_hwm_kib(pid)? as f64 / 1024.0;
        let metrics_url = format!("http://{}/metrics", settings.rating.listen);
        let m = scrape(http, &metrics_url).await.unwrap_or_default();
        let accepted = value_of(&m, "billing_rating_events_total{outcome=\"accepted\"}");
        println!(
            "    rating restarted {run} over {lifecycle_total} lifecycle events ({} customers): {PROBES} usage events rated and committed \
             {restart_s:.1} s after its start (accepted {accepted:.0}, lifecycle events folded {:.0}); target ≤ {RESTART_TARGET_S:.0} s: {}; \
             peak memory (VmHWM) {hwm_mib:.0} MiB",
            args.customers as u64 + n,
            value_of(&m, "billing_rating_reference_events_total{topic=\"lifecycle\"}"),
            met(restart_s <= RESTART_TARGET_S && accepted >= PROBES as f64)
        );
        if run == "from the topic's start" {
            // The snapshot this start takes once caught up (of every lifecycle event), before it is stopped.
            let t = Instant::now();
            let head = loop {
                let heads = snapshots.heads(&snapshot_name).await?;
                if let Some(h) = heads
                    .into_iter()
                    .find(|h| h.sha256.is_some() && h.folded == lifecycle_total)
                {
                    break h;
                }
                anyhow::ensure!(
                    t.elapsed() < timeout,
                    "no reference snapshot of the whole topic written"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            println!(
                "    its snapshot of the lifecycle state ({} customers, {:.1} MiB) written {:.1} s after it caught up",
                head.customers,
                head.bytes as f64 / f64::from(1 << 20),
                t.elapsed().as_secs_f64()
            );
        }
        children.stop("rating");
    }
    Ok(())
}

/// A metric of a scrape, 0 when absent.
fn value_of(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// 1,000 usage events (ids unique to `run`) for customers spread over the `n` of the restart measurement.
async fn produce_probes(
    producer: &rdkafka::producer::FutureProducer,
    topics: &Topics,
    id: &str,
    run: &str,
    n: u64,
) -> anyhow::Result<()> {
    let headers = OwnedHeaders::new().insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(Encoding::Avro.content_type()),
    });
    let start = month_start();
    let mut inflight = VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..PROBES.min(n) {
        let customer = format!("rst-{:07}", i * n / PROBES.min(n));
        let ev = UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("{id}-restart-{run}-{i}"),
            customer_id: customer.clone(),
            metric_code: "requests".into(),
            timestamp: start + chrono::Duration::days(10),
            properties: BTreeMap::new(),
        };
        let key = customer_key(TENANT, &customer);
        let payload = encode(&ev, Encoding::Avro)?;
        let record = FutureRecord::to(&topics.usage)
            .key(&key)
            .payload(&payload)
            .headers(headers.clone());
        inflight.push_back(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?,
        );
    }
    for d in inflight {
        ack(d).await?;
    }
    Ok(())
}

/// Publish the catalog (three metrics, one plan) and create and subscribe every customer; returns how many
/// catalog and lifecycle events were written.
async fn publish_reference(publisher: &Publisher, customers: u64) -> anyhow::Result<(u64, u64)> {
    let start = month_start();
    let metrics = [
        ("api_calls", Aggregation::Sum, Some("value")),
        ("requests", Aggregation::Count, None),
        ("active_users", Aggregation::UniqueCount, Some("user")),
    ];
    let mut pending = Vec::new();
    for (code, aggregation, field) in metrics {
        let ev = CatalogEvent::metric(TENANT, start, code, aggregation, field, vec![]);
        pending.push(publisher.send_catalog(&ev, Encoding::Json)?);
    }
    let tiers = r#"{"graduated_ranges":[
        {"from_value":0,"to_value":100,"per_unit_amount":"0","flat_amount":"0"},
        {"from_value":100,"to_value":null,"per_unit_amount":"0.05","flat_amount":"1"}]}"#;
    let charge = |id: &str, model, props: &str| Charge::on_metric(id, id, model, props);
    let plan = CatalogEvent::plan(
        TENANT,
        start,
        Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: "bench".into(),
            name: "Bench".into(),
            interval: Interval::Monthly,
            currency: "EUR".into(),
            amount: "29.00".into(),
            pay_in_advance: true,
            trial_period_days: 0,
            charges: vec![
                charge("api_calls", ChargeModel::Graduated, tiers),
                charge("requests", ChargeModel::Standard, r#"{"amount":"0.002"}"#),
                charge(
                    "active_users",
                    ChargeModel::Standard,
                    r#"{"amount":"1.50"}"#,
                ),
            ],
        },
    );
    pending.push(publisher.send_catalog(&plan, Encoding::Json)?);
    for d in pending.drain(..) {
        ack(d).await?;
    }
    let catalog_n = 4;
    let mut inflight = VecDeque::new();
    for c in 0..customers {
        let customer = customer_id(c);
        for ev in LifecycleEvent::customer_subscribed(
            TENANT,
            CustomerCreated::new(&customer, &customer, "EUR", "UTC"),
            &format!("sub-{customer}"),
            "bench",
            start,
        ) {
            inflight.push_back(publisher.send_lifecycle(&ev, Encoding::Avro)?);
            if inflight.len() >= 10_000 {
                ack(inflight.pop_front().expect("non-empty")).await?;
            }
        }
    }
    for d in inflight {
        ack(d).await?;
    }
    Ok((catalog_n, customers * 2))
}

/// Σ of the high watermarks of `topic`.
fn end_offsets(brokers: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let t = Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), t)?;
    let mut out = Vec::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), t)?;
        out.push((p.id(), high));
    }
    Ok(out)
}

/// Wait until `topic` holds `n` records.
async fn wait_for_end(
    settings: &Settings,
    topic: &str,
    n: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (b, t) = (settings.kafka.brokers.clone(), topic.to_owned());
        let ends = tokio::task::spawn_blocking(move || end_offsets(&b, &t)).await??;
        let total: i64 = ends.iter().map(|(_, h)| h).sum();
        if total as u64 >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic} holds {total} of {n} records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Read the whole topic with a plain consumer in a fresh group; returns (seconds including the group join,
/// seconds from the first message).
async fn bare_consume(
    settings: &Settings,
    topic: &str,
    n: u64,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(f64, f64)> {
    let brokers = settings.kafka.brokers.clone();
    let group = format!("bench-{id}-bare");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let mut first: Option<Instant> = None;
        let (mut count, mut touched) = (0u64, 0u64);
        while count < n {
            anyhow::ensure!(t0.elapsed() < timeout, "bare consumer read {count} of {n}");
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    first.get_or_insert_with(Instant::now);
                    if let Some(p) = m.payload() {
                        touched =
                            touched.wrapping_add(p.iter().map(|&b| u64::from(b)).sum::<u64>());
                    }
                    count += 1;
                }
                Some(Err(e)) => anyhow::bail!("bare consumer: {e}"),
                None => {}
            }
        }
        std::hint::black_box(touched);
        let end = Instant::now();
        Ok((
            (end - t0).as_secs_f64(),
            (end - first.unwrap_or(t0)).as_secs_f64(),
        ))
    })
    .await?
}

/// Σ (end − committed) over the partitions of `topic` for rating's group.
async fn group_lag(settings: &Settings, topic: &str) -> anyhow::Result<i64> {
    let brokers = settings.kafka.brokers.clone();
    let group = settings.rating.group_id.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let ends = end_offsets(&brokers, &topic)?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &ends {
            tpl.add_partition(&topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        let mut lag = 0;
        for (p, high) in ends {
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

/// Prometheus text → value per series (name with labels).
/// What rating did meanwhile, from two scrapes of its metrics: checkpoints (their steps on average, and how many took
/// longer than 100 ms) and reference barriers.
fn during_probe(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    // `labels` is empty or `{k="v"}`.
    let mean_ms = |name: &str, labels: &str| {
        1000.0 * delta(&format!("{name}_sum{labels}"))
            / delta(&format!("{name}_count{labels}")).max(1.0)
    };
    let over = |name: &str, le: &str| {
        delta(&format!("{name}_count")) - delta(&format!("{name}_bucket{{le=\"{le}\"}}"))
    };
    let ck = "billing_rating_checkpoint_seconds";
    let barrier = "billing_rating_reference_barrier_seconds";
    format!(
        "meanwhile rating made {:.0} checkpoints ({:.0} ms on average: ClickHouse {:.0} ms, ScyllaDB {:.0} ms; {:.0} over 100 ms) \
         and {:.0} reference barriers ({:.0} ms on average, {:.0} over 25 ms)",
        delta(&format!("{ck}_count")),
        mean_ms(ck, ""),
        mean_ms("billing_rating_checkpoint_step_seconds", "{step=\"clickhouse\"}"),
        mean_ms("billing_rating_checkpoint_step_seconds", "{step=\"scylla\"}"),
        over(ck, "0.1"),
        delta(&format!("{barrier}_count")),
        mean_ms(barrier, ""),
        over(barrier, "0.025"),
    )
}

async fn wait_http_ok(http: &reqwest::Client, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Σ events_count over a customer's charges in the period containing `at`, as the usage API serves it.
async fn api_events(
    http: &reqwest::Client,
    api: &str,
    customer: &str,
    at: &str,
) -> anyhow::Result<u64> {
    let resp = http
        .get(format!("{api}/v1/customers/{customer}/usage"))
        .query(&[("at", at)])
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "usage API answered {}",
        resp.status()
    );
    let doc: serde_json::Value = resp.json().await?;
    Ok(doc["charges"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["events_count"].as_u64()).sum())
        .unwrap_or(0))
}

/// Customers rating loads together at most: the new customers of one batch of messages it takes from the consumer.
const LOAD_BATCH: usize = 2_000;

/// What [`store_alone`] measured.
struct StoreAlone {
    load_s: f64,
    writes: usize,
    ids_per_write: usize,
    write_s: f64,
}

/// The store's own rates for rating's work, with rating idle: every customer loaded as rating loads it, then as
/// many customer writes as rating's checkpoints made (aggregates batch, then a block of new ids of the average
/// size), in rounds of one write per customer like a checkpoint. The aggregates are rewritten with their own
/// values and stamps (no change); the blocks hold ids no event has.
async fn store_alone(
    settings: &Settings,
    customers: u64,
    customer_writes: f64,
    events: u64,
) -> anyhow::Result<StoreAlone> {
    use billing_store::usage::{CustomerWrite, UsageStore};
    use billing_store::usage_dedup::IdHash;
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let store = Arc::new(UsageStore::new(session, &settings.cassandra.keyspace).await?);
    // As rating loads them: the new customers of a batch of messages together (`UsageStore::load_many`), one
    // batch after the other.
    let ids: Vec<String> = (0..customers).map(customer_id).collect();
    let t = Instant::now();
    let mut loaded: Vec<(String, billing_store::usage::CustomerUsage)> = Vec::new();
    for batch in ids.chunks(LOAD_BATCH) {
        let named: Vec<(&str, &str)> = batch.iter().map(|c| (TENANT, c.as_str())).collect();
        let usage = store.load_many(&named).await?;
        loaded.extend(usage.into_iter().map(|((_, c), u)| (c, u)));
    }
    let load_s = t.elapsed().as_secs_f64();
    let rounds = (customer_writes / customers as f64).round().max(1.0) as usize;
    let ids_per_write = ((events as f64 / customer_writes).round() as usize).max(1);
    let mut next_id = 0u64;
    let mut write_s = 0.0;
    let mut writes = 0;
    for _ in 0..rounds {
        let round: Vec<CustomerWrite> = loaded
            .iter()
            .map(|(customer, usage)| CustomerWrite {
                tenant: TENANT.into(),
                customer: customer.clone(),
                aggregates: usage
                    .aggregates
                    .iter()
                    .map(|(k, s)| (k.clone(), s.without_unique(), Vec::new()))
                    .collect(),
                seen: (0..ids_per_write)
                    .map(|_| {
                        next_id += 1;
                        IdHash::of(&format!("store-alone-{next_id}"))
                    })
                    .collect(),
                // As rating writes it: the window of the offsets its aggregates were last written at.
                window: usage
                    .aggregates
                    .values()
                    .map(|s| s.last_offset)
                    .max()
                    .map(|to| billing_store::usage_aggregates::AppliedWindow {
                        partition: 0,
                        from: to,
                        to,
                        rejected: Vec::new(),
                    }),
                block_id: uuid::Uuid::new_v4(),
            })
            .collect();
        let t = Instant::now();
        store.save_checkpoint(&round).await?;
        write_s += t.elapsed().as_secs_f64();
        writes += round.len();
    }
    Ok(StoreAlone {
        load_s,
        writes,
        ids_per_write,
        write_s,
    })
}

/// Σ events_count over the usage_aggregates rows of every customer, read partition by partition (a full scan
/// trips Cassandra's tombstone limit: rating writes unused columns as nulls).
async fn stored_events_count(settings: &Settings, customers: u64) -> anyhow::Result<u64> {
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let select = session
        .prepare(format!(
            "SELECT events_count FROM {}.usage_aggregates WHERE tenant_id = ? AND customer_id = ? \
             AND subscription_id > ''",
            settings.cassandra.keyspace
        ))
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let (session, select) = (session.clone(), select.clone());
        tasks.spawn(async move {
            let mut sum = 0u64;
            for c in (w..customers).step_by(workers as usize) {
                let rows = session
                    .execute_unpaged(&select, (TENANT, customer_id(c)))
                    .await?
                    .into_rows_result()?;
                for r in rows.rows::<(Option<i64>,)>()? {
                    sum += u64::try_from(r?.0.unwrap_or(0)).unwrap_or(0);
                }
            }
            Ok::<u64, anyhow::Error>(sum)
        });
    }
    let mut sum = 0;
    while let Some(r) = tasks.join_next().await {
        sum += r??;
    }
    Ok(sum)
}

/// A followed event of the freshness probe: acked, not seen in the API yet.
struct Followed {
    acked: Instant,
    customer: String,
    /// The event's time, as the usage API's `at`.
    at: String,
    /// The customer's events_count once the event shows.
    expect: u64,
}

impl Followed {
    /// Read the customer's usage once: the latency in ms if the event shows.
    async fn read(
        &self,
        http: &reqwest::Client,
        api: &str,
        reads: &std::sync::atomic::AtomicU64,
    ) -> anyhow::Result<Option<f64>> {
        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seen = api_events(http, api, &self.customer, &self.at)
            .await
            .unwrap_or(0)
            >= self.expect;
        let ms = self.acked.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            seen || ms < 30_000.0,
            "event of {} not visible after 30 s",
            self.customer
        );
        Ok(seen.then_some(ms))
    }
}

/// Produce single events at the configured rate, each to a distinct customer, and measure ack → visible for one in
/// `freshness_sample`, read as `freshness_poll` says. Returns the latencies (ms, sorted) and the reads made.
async fn freshness(
    args: &Args,
    topics: &Topics,
    producer: &FutureProducer,
    http: &reqwest::Client,
    api: &str,
    customers: u64,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let total = u64::from(args.freshness_rate) * u64::from(args.freshness_secs);
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pollers = Arc::new(tokio::sync::Semaphore::new(256));
    let sample = u64::from(args.freshness_sample.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    // `Oldest`: one watcher reads the followed events in the order of their acks.
    let (follow, followed) = tokio::sync::mpsc::unbounded_channel::<Followed>();
    let watcher = (args.freshness_poll == FreshnessPoll::Oldest).then(|| {
        tokio::spawn(watch_oldest(
            followed,
            http.clone(),
            api.to_owned(),
            reads.clone(),
        ))
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(args.freshness_rate.max(1)),
    ));
    let run = uuid::Uuid::new_v4().simple().to_string();
    for k in 0..total {
        tick.tick().await;
        let c = k % customers;
        let expect = k / customers + 1;
        let ev = UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("fresh-{run}-{k}"),
            customer_id: customer_id(c),
            metric_code: "api_calls".into(),
            timestamp: Utc::now(),
            properties: BTreeMap::from([("value".to_owned(), "1".to_owned())]),
        };
        let payload = encode(&ev, Encoding::Avro)?;
        let key = customer_key(TENANT, &ev.customer_id);
        let headers = OwnedHeaders::new().insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(Encoding::Avro.content_type()),
        });
        let delivery = producer
            .send_result(
                FutureRecord::to(&topics.usage)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
            )
            .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
        if k % sample != 0 {
            tasks.spawn(async move {
                ack(delivery).await?;
                Ok(None)
            });
            continue;
        }
        let (http, api, pollers, reads, follow) = (
            http.clone(),
            api.to_owned(),
            pollers.clone(),
            reads.clone(),
            follow.clone(),
        );
        let at = ev.timestamp.to_rfc3339();
        let customer = ev.customer_id.clone();
        let each = args.freshness_poll == FreshnessPoll::Each;
        tasks.spawn(async move {
            ack(delivery).await?;
            let event = Followed {
                acked: Instant::now(),
                customer,
                at,
                expect,
            };
            if !each {
                follow
                    .send(event)
                    .map_err(|_| anyhow::anyhow!("the freshness watcher stopped"))?;
                return Ok(None);
            }
            let _permit = pollers.acquire_owned().await?;
            loop {
                if let Some(ms) = event.read(&http, &api, &reads).await? {
                    return Ok::<_, anyhow::Error>(Some(ms));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    drop(follow);
    let mut lat = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    if let Some(watcher) = watcher {
        lat.extend(watcher.await??);
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat, reads.load(std::sync::atomic::Ordering::Relaxed)))
}

/// The `Oldest` probe: every 10 ms, read the oldest followed event not seen yet; when it shows, read all the
/// others once, concurrently. Ends when the producer side has hung up and every event was seen.
async fn watch_oldest(
    mut followed: tokio::sync::mpsc::UnboundedReceiver<Followed>,
    http: reqwest::Client,
    api: String,
    reads: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::new();
    let mut waiting: VecDeque<Followed> = VecDeque::new();
    let mut open = true;
    loop {
        loop {
            match followed.try_recv() {
                Ok(f) => waiting.push_back(f),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let Some(oldest) = waiting.front() else {
            if !open {
                return Ok(lat);
            }
            match followed.recv().await {
                Some(f) => waiting.push_back(f),
                None => open = false,
            }
            continue;
        };
        if let Some(ms) = oldest.read(&http, &api, &reads).await? {
            lat.push(ms);
            waiting.pop_front();
            let swept =
                futures::future::join_all(waiting.iter().map(|f| f.read(&http, &api, &reads)))
                    .await;
            let mut kept = VecDeque::with_capacity(waiting.len());
            for (f, seen) in waiting.drain(..).zip(swept) {
                match seen? {
                    Some(ms) => lat.push(ms),
                    None => kept.push_back(f),
                }
            }
            waiting = kept;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU seconds (user and system) a process has used, from `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's
/// `USER_HZ`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's name, which is in parentheses and may hold spaces: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = stat.rsplit_once(')').context("no command in /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU seconds used so far by the stack's servers on this machine, found by their command lines: Cassandra, Kafka,
/// ClickHouse.
fn stack_cpu() -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::from([("Cassandra", 0.0), ("ClickHouse", 0.0), ("Kafka", 0.0)]);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let name = if cmdline.contains("org.apache.cassandra.service.CassandraDaemon") {
            "Cassandra"
        } else if cmdline.contains("kafka.Kafka") {
            "Kafka"
        } else if cmdline.contains("clickhouse-server") || cmdline.contains("clickhouse\0server") {
            "ClickHouse"
        } else {
            continue;
        };
        if let (Ok(cpu), Some(total)) = (cpu_seconds(pid), out.get_mut(name)) {
            *total += cpu;
        }
    }
    out
}

/// Post `gateway_batches` batches of 1,000 events from `gateway_clients` tasks; returns (accepted, seconds).
async fn gateway(
    args: &Args,
    ingest: &str,
    key: &str,
    customers: u64,
    id: &str,
) -> anyhow::Result<(u64, f64)> {
    let now = Utc::now();
    let bodies: Vec<Vec<u8>> = (0..u64::from(args.gateway_batches))
        .map(|b| {
            let events: Vec<serde_json::Value> = (0..1000u64)
                .map(|j| {
                    let i = b * 1000 + j;
                    serde_json::json!({
                        "tenant_id": TENANT,
                        "event_id": format!("gw-{id}-{i}"),
                        "customer_id": customer_id(i % customers),
                        "metric_code": "api_calls",
                        "timestamp": now.to_rfc3339(),
                        "properties": {"value": 2},
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "events": events })).expect("json")
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(crate::keys::bearer_headers(key)?)
        .build()?;
    let url = format!("{ingest}/v1/events");
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.gateway_clients.max(1) {
        let (queue, http, url) = (queue.clone(), http.clone(), url.clone());
        tasks.spawn(async move {
            let mut accepted = 0u64;
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    return Ok::<u64, anyhow::Error>(accepted);
                };
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let answer: serde_json::Value = resp.json().await?;
                anyhow::ensure!(status.is_success(), "gateway answered {status}: {answer}");
                accepted += answer["accepted"].as_u64().unwrap_or(0);
            }
        });
    }
    let mut accepted = 0;
    while let Some(r) = tasks.join_next().await {
        accepted += r??;
    }
    Ok((accepted, t.elapsed().as_secs_f64()))
}

/// Drop the bench's keyspace, ClickHouse database, topics and consumer groups.
async fn cleanup(settings: &Settings, id: &str) {
    let bare = format!("bench-{id}-bare");
    let groups = [settings.rating.group_id.as_str(), bare.as_str()];
    drop_environment(
        settings,
        std::slice::from_ref(&settings.kafka.topic_prefix),
        &groups,
    )
    .await;
    println!("cleaned up: keyspace, database, topics and groups of bench {id}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_customer_expects_the_events_the_workload_sends_it() {
        for (n, customers, burst) in [
            (500, 7, 1),
            (500, 7, 3),
            (503, 10, 50),
            (40, 100, 1),
            (1_000, 4, 250),
        ] {
            let mut sent = vec![0u64; customers as usize];
            for i in 0..n {
                let c: u64 = bulk_event("r", i, customers, burst).customer_id[4..]
                    .parse()
                    .unwrap();
                sent[c as usize] += 1;
            }
            for (c, &want) in sent.iter().enumerate() {
                assert_eq!(
                    bulk_events_of(c as u64, n, customers, burst),
                    want,
                    "{n} {customers} {burst} {c}"
                );
            }
            assert_eq!(sent.iter().sum::<u64>(), n);
        }
    }
}
