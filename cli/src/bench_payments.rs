//! `billing bench-payments`: the payments service's throughput on the sandbox provider, with its baseline measured
//! in the same run.
//!
//! A run has rounds (one tenant; `--tenants` tenants; optionally those tenants at a higher `payments.concurrency`).
//! Each round has topics of its own (prefix), its own tenants and consumer groups, in the run's keyspace and
//! ClickHouse database. It publishes N customers (`CustomerCreated` on a test clock that never ticks, so no reminder
//! or retry is ever due) with a default `pm_card_visa` (`PaymentMethodAdded`), spread round-robin over the round's
//! tenants, and registers one webhook endpoint per tenant (subscribed to `payment.succeeded`, pointing at a receiver
//! in this process). Then it starts `billing payments` as a child process and warms it up: a few invoices of a
//! tenant of their own, at least one on every partition, published after everything else, so that their payments
//! mean every partition has folded its history. The measured phase publishes N `invoice.finalized` (one per
//! customer, 29.00 EUR) and times from the first of them produced to the N-th `PaymentSucceeded` of the round's
//! tenants read back from `billing.payments`. The sandbox's ledger is then read to check each invoice was charged
//! exactly once. Then `billing webhooks` is started as a child (the payment events are already in the topics) and
//! the receiver times the first to the N-th distinct event it is sent.
//!
//! Baseline, in the same run: a plain rdkafka consumer reading N messages of the first round's `billing.invoices`
//! from the earliest offsets, once touching the bytes only and once decoding each `InvoiceEvent` as the service
//! does. It also reports the payments child's peak memory (VmHWM) and the CPU used by it, Cassandra and Kafka during
//! the measured phase. Everything it created is dropped at the end and its child processes are stopped (SIGTERM,
//! then wait), also on error.

// Rates, latencies and memory figures are measurements, not money: floating point is the right tool here.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::children::{drop_environment, free_addr, met, Children};
use crate::measure::{cpu_snapshot, grouped, scrape, vm_hwm_kib};
use billing_runtime::kafka::{self, Topics};
use billing_runtime::publish::{ack_at, Publisher};
use billing_runtime::{Settings, Shutdown};
use billing_schemas::invoice::{Invoice, InvoiceEvent, InvoiceFinalized, InvoiceLine, LineKind};
use billing_schemas::lifecycle::{CustomerCreated, Lifecycle, LifecycleEvent};
use billing_schemas::payment::{Payment, PaymentEvent, PaymentMethodAdded};
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use billing_store::sandbox_ledger::SandboxLedgerStore;
use billing_store::webhook_endpoints::{WebhookEndpoint, WebhookEndpoints};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Benchmark options.
#[derive(clap::Args)]
pub struct Args {
    /// Finalized invoices charged in each round, one per customer, each customer with a default `pm_card_visa`.
    #[arg(long, default_value_t = 20_000)]
    invoices: u32,
    /// Tenants of the multi-tenant rounds (the first round has one); the customers are spread over them.
    #[arg(long, default_value_t = 50)]
    tenants: u32,
    /// `payments.concurrency` of the first two rounds (the service's default is 64).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// `payments.concurrency` of a third round with `--tenants` tenants (0 skips it).
    #[arg(long, default_value_t = 256)]
    high_concurrency: usize,
    /// Skip the webhook deliveries.
    #[arg(long)]
    no_webhooks: bool,
    /// Partitions of the bench's topics.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

/// The floor, on the sandbox provider.
const TARGET: f64 = 1_000.0;
/// Events published and not yet acknowledged, at most.
const IN_FLIGHT: usize = 20_000;
/// The customers' test clock: it never ticks, so the only action due is attempt 1 (at finalization).
const CLOCK: &str = "bench-clock";
const AMOUNT: &str = "29.00";
/// Warm-up customers per partition, at most (they stop once every partition has one).
const WARMUP_PER_PARTITION: usize = 64;

fn issued_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

fn period_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// One round: its tenants and the service's concurrency.
struct Round {
    no: usize,
    tenants: u32,
    concurrency: usize,
    webhooks: bool,
}

impl Round {
    fn tenant(&self, j: u32) -> String {
        format!("bench-r{}-t{j:03}", self.no)
    }

    fn tenants(&self) -> Vec<String> {
        (0..self.tenants.max(1)).map(|j| self.tenant(j)).collect()
    }

    fn warm_tenant(&self) -> String {
        format!("bench-r{}-warm", self.no)
    }

    /// Customer `c` belongs to tenant `c mod tenants`.
    fn owner(&self, c: u64) -> String {
        self.tenant((c % u64::from(self.tenants.max(1))) as u32)
    }

    fn label(&self) -> String {
        format!(
            "{} tenant{}, concurrency {}",
            self.tenants,
            if self.tenants == 1 { "" } else { "s" },
            self.concurrency
        )
    }

    fn settings(&self, base: &Settings, id: &str) -> anyhow::Result<Settings> {
        let mut s = base.clone();
        s.kafka.topic_prefix = format!("bench.{id}.r{}.", self.no);
        s.payments.group_id = format!("bench-{id}-r{}-payments", self.no);
        s.payments.concurrency = self.concurrency.max(1);
        s.payments.listen = free_addr()?;
        s.webhooks.group_id = format!("bench-{id}-r{}-webhooks", self.no);
        s.webhooks.listen = free_addr()?;
        Ok(s)
    }
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
        ("BILLING__PAYMENTS__GROUP_ID", s.payments.group_id.clone()),
        ("BILLING__PAYMENTS__LISTEN", s.payments.listen.to_string()),
        (
            "BILLING__PAYMENTS__CONCURRENCY",
            s.payments.concurrency.to_string(),
        ),
        ("BILLING__PAYMENTS__PROVIDER__KIND", "sandbox".to_owned()),
        ("BILLING__WEBHOOKS__GROUP_ID", s.webhooks.group_id.clone()),
        ("BILLING__WEBHOOKS__LISTEN", s.webhooks.listen.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn customer_id(c: u64) -> String {
    format!("cus-{c:06}")
}

fn customer_created(tenant: &str, customer: &str) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: tenant.into(),
        event_id: format!("customer-{customer}"),
        occurred_at: issued_at(),
        payload: Lifecycle::CustomerCreated(CustomerCreated {
            test_clock_id: Some(CLOCK.into()),
            ..CustomerCreated::new(customer, customer, "EUR", "UTC")
        }),
    }
}

fn method_added(tenant: &str, customer: &str) -> PaymentEvent {
    PaymentEvent {
        tenant_id: tenant.into(),
        event_id: format!("pm-added-{customer}"),
        occurred_at: issued_at(),
        payload: Payment::PaymentMethodAdded(PaymentMethodAdded {
            customer_id: customer.into(),
            payment_method_id: format!("pm_{customer}"),
            kind: "card".into(),
            token: "pm_card_visa".into(),
            set_default: true,
        }),
    }
}

/// The `invoice.finalized` the invoicer would publish for a one-line invoice (`bill::finalized_event`'s shape).
fn finalized(tenant: &str, customer: &str, number: u64) -> InvoiceEvent {
    let invoice_id = format!("inv_20260101_{customer}");
    let sub = format!("sub-{customer}");
    InvoiceEvent {
        tenant_id: tenant.into(),
        event_id: invoice_id.clone(),
        occurred_at: issued_at(),
        payload: Invoice::InvoiceFinalized(Box::new(InvoiceFinalized {
            invoice_id,
            number: format!("{}-{number:06}", tenant.to_uppercase()),
            customer_id: customer.into(),
            currency: "EUR".into(),
            subscription_ids: vec![sub.clone()],
            billing_date: issued_at(),
            issued_at: issued_at(),
            due_date: issued_at(),
            period_start: issued_at(),
            period_end: period_end(),
            lines: vec![InvoiceLine {
                kind: LineKind::SubscriptionFee,
                description: "Basic fee, 2026-01-01 to 2026-01-31".into(),
                subscription_id: Some(sub),
                charge_id: None,
                period_start: Some(issued_at()),
                period_end: Some(period_end()),
                units: "1".into(),
                amount: AMOUNT.into(),
                discount: "0.00".into(),
                tax: "0.00".into(),
                total: AMOUNT.into(),
            }],
            subtotal: AMOUNT.into(),
            discount_total: "0.00".into(),
            tax_total: "0.00".into(),
            credits_total: "0.00".into(),
            applied_taxes: vec![],
            tax_note: None,
            coupons: vec![],
            total: AMOUNT.into(),
        })),
    }
}

/// Deliveries not yet acknowledged, at most [`IN_FLIGHT`]; remembers the partitions they landed on.
#[derive(Default)]
struct InFlight {
    queue: VecDeque<DeliveryFuture>,
    partitions: HashSet<i32>,
}

impl InFlight {
    async fn push(&mut self, d: DeliveryFuture) -> anyhow::Result<()> {
        self.queue.push_back(d);
        if self.queue.len() >= IN_FLIGHT {
            self.pop().await?;
        }
        Ok(())
    }

    async fn pop(&mut self) -> anyhow::Result<()> {
        if let Some(d) = self.queue.pop_front() {
            self.partitions.insert(ack_at(d).await?.0);
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.queue.is_empty() {
            self.pop().await?;
        }
        Ok(())
    }
}

/// Enqueue an invoice event as the invoicer does (Avro, keyed tenant/customer); waits for room if the local
/// queue is full.
async fn send_invoice(
    producer: &FutureProducer,
    topic: &str,
    ev: &InvoiceEvent,
    inflight: &mut InFlight,
) -> anyhow::Result<()> {
    let Invoice::InvoiceFinalized(f) = &ev.payload else {
        anyhow::bail!("only finalized invoices are sent");
    };
    let key = customer_key(&ev.tenant_id, &f.customer_id);
    let payload = encode(ev, Encoding::Avro)?;
    loop {
        let headers = OwnedHeaders::new().insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(Encoding::Avro.content_type()),
        });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        match producer.send_result(record) {
            Ok(d) => return inflight.push(d).await,
            Err((e, _)) => {
                anyhow::ensure!(!inflight.queue.is_empty(), "produce failed: {e}");
                inflight.pop().await?;
            }
        }
    }
}

/// Figures of one round.
#[derive(Default)]
struct RoundFigures {
    label: String,
    concurrency: usize,
    /// Wall time between the two CPU snapshots of the measured phase.
    cpu_wall_s: f64,
    warmup_invoices: usize,
    warmup_s: f64,
    /// From the first `invoice.finalized` produced: all N acknowledged, the first and the N-th `PaymentSucceeded`.
    produced_s: f64,
    first_s: f64,
    last_s: f64,
    succeeded: usize,
    failed: BTreeMap<String, usize>,
    ledger_charges: usize,
    ledger_once: bool,
    hwm_mib: f64,
    provider_calls: f64,
    action_failures: f64,
    cpu: Vec<(String, f64)>,
    busy: f64,
    webhooks: Option<WebhookFigures>,
}

impl RoundFigures {
    fn rate(&self) -> f64 {
        if self.last_s > 0.0 {
            self.succeeded as f64 / self.last_s
        } else {
            0.0
        }
    }
}

struct WebhookFigures {
    /// From the child's start: the first request, the N-th distinct event.
    first_s: f64,
    last_s: f64,
    events: usize,
    requests: u64,
}

impl WebhookFigures {
    fn rate(&self) -> f64 {
        let span = self.last_s - self.first_s;
        if span > 0.0 {
            self.events as f64 / span
        } else {
            0.0
        }
    }
}

/// The bare consumer, read once on the first round's invoices.
#[derive(Default)]
struct Baseline {
    n: u64,
    raw_s: f64,
    decoded_s: f64,
}

/// Run the benchmark; the bench's data is dropped and its children stopped whatever happens.
pub async fn run(base: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut settings = base;
    settings.kafka.topic_prefix = format!("bench.{id}.");
    settings.kafka.partitions = args.partitions;
    settings.cassandra.keyspace = format!("bench_{id}");
    settings.clickhouse.database = format!("bench_{id}");
    let mut rounds = vec![
        Round {
            no: 1,
            tenants: 1,
            concurrency: args.concurrency,
            webhooks: !args.no_webhooks,
        },
        Round {
            no: 2,
            tenants: args.tenants.max(1),
            concurrency: args.concurrency,
            webhooks: !args.no_webhooks,
        },
    ];
    if args.high_concurrency > 0 {
        rounds.push(Round {
            no: 3,
            tenants: args.tenants.max(1),
            concurrency: args.high_concurrency,
            webhooks: false,
        });
    }
    println!(
        "bench-payments {id}: {} finalized invoices per round (one per customer, {AMOUNT} EUR, pm_card_visa), rounds: {}; {} partitions; sandbox provider (started {})",
        args.invoices,
        rounds.iter().map(Round::label).collect::<Vec<_>>().join(" / "),
        args.partitions,
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let mut children = Children::default();
    let result = tokio::select! {
        r = phases(&settings, &args, &id, &rounds, &mut children) => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(children);
    cleanup(&settings, &id, &rounds).await;
    result
}

async fn phases(
    settings: &Settings,
    args: &Args,
    id: &str,
    rounds: &[Round],
    children: &mut Children,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let n = u64::from(args.invoices.max(1));
    // The keyspace and database first (the base prefix's topics are never used, and dropped at the end).
    let report = billing_store::migrate::run(settings)
        .await
        .context("migration failed")?;
    println!("migrated: {report}");
    let session = Arc::new(billing_runtime::cql::connect(&settings.cassandra).await?);
    let ks = &settings.cassandra.keyspace;
    let endpoints = WebhookEndpoints::new(session.clone(), ks).await?;
    let ledger = SandboxLedgerStore::new(session.clone(), ks).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut figures = Vec::new();
    let mut baseline = Baseline::default();
    for round in rounds {
        let s = round.settings(settings, id)?;
        let made = kafka::ensure_topics(&s.kafka).await?;
        println!(
            "\nround {}: {} ({} topics created with prefix {})",
            round.no,
            round.label(),
            made.len(),
            s.kafka.topic_prefix
        );
        let fig = run_round(
            &s, round, n, id, timeout, &endpoints, &ledger, &http, children,
        )
        .await?;
        if round.no == 1 {
            let topic = Topics::new(&s.kafka).invoices;
            baseline.n = n;
            baseline.raw_s = bare_consume(&s, &topic, n, false, timeout).await?;
            baseline.decoded_s = bare_consume(&s, &topic, n, true, timeout).await?;
            println!(
                "baseline: bare consume of {n} messages of {topic} from the earliest offsets: {:.0} events/s (bytes touched only), {:.0} events/s (decoded as InvoiceEvent, as the service does)",
                n as f64 / baseline.raw_s,
                n as f64 / baseline.decoded_s
            );
        }
        figures.push(fig);
    }
    print_table(args, n, &baseline, &figures);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_round(
    s: &Settings,
    round: &Round,
    n: u64,
    id: &str,
    timeout: Duration,
    endpoints: &WebhookEndpoints,
    ledger: &SandboxLedgerStore,
    http: &reqwest::Client,
    children: &mut Children,
) -> anyhow::Result<RoundFigures> {
    let mut fig = RoundFigures {
        label: round.label(),
        concurrency: round.concurrency.max(1),
        ..RoundFigures::default()
    };
    let topics = Topics::new(&s.kafka);
    let publisher = Publisher::new(&s.kafka)?;
    let producer = kafka::producer(&s.kafka)?;
    let env = child_env(s);
    let log_id = format!("payments-{id}-r{}", round.no);

    // Webhook endpoints first: the dispatcher delivers only events appended after an endpoint was created.
    let receiver = if round.webhooks {
        let r = Receiver::start(n as usize).await?;
        let now = Utc::now();
        for tenant in round.tenants() {
            endpoints
                .put(&WebhookEndpoint {
                    tenant_id: tenant.clone(),
                    endpoint_id: format!("we_bench_{tenant}"),
                    url: format!("http://{}/hooks/{tenant}", r.addr),
                    event_types: vec!["payment.succeeded".into()],
                    description: "bench-payments receiver".into(),
                    enabled: true,
                    secret: format!("whsec_bench{}", uuid::Uuid::new_v4().simple()),
                    previous_secret: None,
                    previous_secret_expires_at: None,
                    created_at: now,
                    updated_at: now,
                })
                .await?;
        }
        println!(
            "  {} webhook endpoints (payment.succeeded) → receiver at {}",
            round.tenants, r.addr
        );
        Some(r)
    } else {
        None
    };

    // Customers and their default cards, then the warm-up customers (after them on every partition).
    let t = Instant::now();
    let mut inflight = InFlight::default();
    for c in 0..n {
        let (tenant, customer) = (round.owner(c), customer_id(c));
        inflight
            .push(publisher.send_lifecycle(&customer_created(&tenant, &customer), Encoding::Avro)?)
            .await?;
        inflight
            .push(publisher.send_payment(&method_added(&tenant, &customer), Encoding::Avro)?)
            .await?;
    }
    inflight.finish().await?;
    let warm = round.warm_tenant();
    let mut warm_customers = Vec::new();
    let mut covered = HashSet::new();
    while covered.len() < s.kafka.partitions as usize
        && warm_customers.len() < WARMUP_PER_PARTITION * s.kafka.partitions as usize
    {
        let customer = format!("warm-{:04}", warm_customers.len());
        publisher
            .lifecycle(&customer_created(&warm, &customer), Encoding::Avro)
            .await?;
        let (p, _) = publisher
            .payment_at(&method_added(&warm, &customer), Encoding::Avro)
            .await?;
        covered.insert(p);
        warm_customers.push(customer);
    }
    anyhow::ensure!(
        covered.len() == s.kafka.partitions as usize,
        "warm-up customers cover {} of {} partitions",
        covered.len(),
        s.kafka.partitions
    );
    println!(
        "  {n} customers with a default pm_card_visa over {} tenant(s), and {} warm-up customers, published in {:.1} s",
        round.tenants,
        warm_customers.len(),
        t.elapsed().as_secs_f64()
    );

    // The service, then the warm-up: its payments say every partition has caught up with the history above.
    let pid = children.spawn("payments", &env, &log_id)?;
    let t = Instant::now();
    let watch = Watcher::start(
        s,
        &topics.payments,
        None,
        HashSet::from([warm.clone()]),
        warm_customers.len(),
    )?;
    let mut inflight = InFlight::default();
    for (k, customer) in warm_customers.iter().enumerate() {
        send_invoice(
            &producer,
            &topics.invoices,
            &finalized(&warm, customer, k as u64 + 1),
            &mut inflight,
        )
        .await?;
    }
    inflight.finish().await?;
    let w = watch.wait(timeout, children).await?;
    anyhow::ensure!(
        w.failed.is_empty(),
        "warm-up payments failed: {:?} (see the payments log)",
        w.failed
    );
    fig.warmup_invoices = warm_customers.len();
    fig.warmup_s = t.elapsed().as_secs_f64();
    println!(
        "  payments caught up: {} warm-up invoices paid {:.1} s after the service started",
        fig.warmup_invoices, fig.warmup_s
    );

    // The measured phase.
    let tenants: HashSet<String> = round.tenants().into_iter().collect();
    let from = end_offsets(s, &topics.payments).await?;
    let watch = Watcher::start(s, &topics.payments, Some(from), tenants.clone(), n as usize)?;
    let before = cpu_snapshot(
        &[("payments", pid), ("bench", std::process::id())],
        PAYMENTS_SERVERS,
    );
    let t0 = Instant::now();
    let mut inflight = InFlight::default();
    for c in 0..n {
        send_invoice(
            &producer,
            &topics.invoices,
            &finalized(
                &round.owner(c),
                &customer_id(c),
                c / u64::from(round.tenants.max(1)) + 1,
            ),
            &mut inflight,
        )
        .await?;
    }
    inflight.finish().await?;
    fig.produced_s = t0.elapsed().as_secs_f64();
    let w = watch.wait(timeout, children).await?;
    let after = cpu_snapshot(
        &[("payments", pid), ("bench", std::process::id())],
        PAYMENTS_SERVERS,
    );
    let since = |i: Option<Instant>| i.map_or(0.0, |i| i.duration_since(t0).as_secs_f64());
    fig.first_s = since(w.first);
    fig.last_s = since(w.last);
    fig.succeeded = w.succeeded;
    fig.failed = w.failed;
    fig.hwm_mib = vm_hwm_kib(pid)? as f64 / 1024.0;
    let wall = after.at.duration_since(before.at).as_secs_f64();
    fig.cpu_wall_s = wall;
    fig.busy = after.machine_busy_share(&before);
    let mut accounted = 0.0;
    for (name, secs) in after.process_seconds(&before) {
        accounted += secs / wall;
        fig.cpu.push((name, secs / wall));
    }
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get()) as f64;
    fig.cpu
        .push(("rest".to_owned(), (fig.busy * cores - accounted).max(0.0)));
    let metrics = scrape(http, &format!("http://{}/metrics", s.payments.listen))
        .await
        .unwrap_or_default();
    fig.provider_calls = metrics
        .get("billing_payments_provider_calls_total")
        .copied()
        .unwrap_or(0.0);
    fig.action_failures = metrics
        .get("billing_payments_action_failures_total")
        .copied()
        .unwrap_or(0.0);
    println!(
        "  measured: {n} invoice.finalized produced in {:.2} s; first PaymentSucceeded after {:.2} s, the {}-th after {:.2} s = {:.0} payments/s; failed {:?}; provider calls {}, action failures {}; payments VmHWM {:.0} MiB",
        fig.produced_s,
        fig.first_s,
        fig.succeeded,
        fig.last_s,
        fig.rate(),
        fig.failed,
        fig.provider_calls,
        fig.action_failures,
        fig.hwm_mib
    );
    children.stop("payments");

    // Each invoice charged once: the sandbox's ledger of the round's tenants.
    let mut charges = 0;
    let mut once = true;
    for tenant in &tenants {
        for c in ledger.charges_of_tenant(tenant).await? {
            if c.kind == "charge" {
                charges += 1;
                once &= c.charge_count == 1;
            }
        }
    }
    fig.ledger_charges = charges;
    fig.ledger_once = once && charges == fig.succeeded + fig.failed.values().sum::<usize>();
    println!(
        "  sandbox ledger: {charges} charges recorded for the round's tenants{}",
        if fig.ledger_once {
            ", each once"
        } else {
            " (NOT one per invoice)"
        }
    );

    // Webhooks: the payment events are in the topics; the dispatcher reads them from the start.
    if let Some(receiver) = receiver {
        let t = Instant::now();
        children.spawn("webhooks", &env, &log_id)?;
        let deadline = t + timeout;
        loop {
            if receiver.done() {
                break;
            }
            children.check_alive()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "webhooks: {} of {n} events received after {timeout:?}",
                receiver.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = receiver.snapshot();
        let wf = WebhookFigures {
            first_s: got.first.map_or(0.0, |i| i.duration_since(t).as_secs_f64()),
            last_s: got.nth.map_or(0.0, |i| i.duration_since(t).as_secs_f64()),
            events: got.events.len(),
            requests: got.requests,
        };
        println!(
            "  webhooks: first request {:.2} s after `billing webhooks` started, the {}-th distinct event after {:.2} s = {:.0} deliveries/s (first → N-th); {} requests",
            wf.first_s,
            wf.events,
            wf.last_s,
            wf.rate(),
            wf.requests
        );
        children.stop("webhooks");
        receiver.stop();
        fig.webhooks = Some(wf);
    }
    Ok(fig)
}

fn print_table(args: &Args, n: u64, b: &Baseline, rounds: &[RoundFigures]) {
    let nf = n as f64;
    let decoded = nf / b.decoded_s;
    println!();
    println!(
        "bench-payments: {n} finalized invoices per round, one per customer ({AMOUNT} EUR, default pm_card_visa), sandbox provider, {} partitions",
        args.partitions
    );
    println!(
        "| Figure | {} |",
        rounds
            .iter()
            .map(|r| r.label.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(rounds.len()));
    let row = |name: &str, f: &dyn Fn(&RoundFigures) -> String| {
        println!(
            "| {name} | {} |",
            rounds.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    row(
        &format!(
            "**Payments end to end: first `invoice.finalized` produced → N-th `PaymentSucceeded` (payments/s; floor ≥ {})**",
            grouped(TARGET)
        ),
        &|r| {
            format!(
                "**{}** ({:.2} s): {}",
                grouped(r.rate()),
                r.last_s,
                met(r.rate() >= TARGET && r.succeeded as u64 == n)
            )
        },
    );
    row("… first `PaymentSucceeded` after", &|r| {
        format!("{:.2} s", r.first_s)
    });
    row("… all N invoices produced (acknowledged) after", &|r| {
        format!("{:.2} s", r.produced_s)
    });
    row("Succeeded / failed attempts", &|r| {
        format!("{} / {}", r.succeeded, r.failed.values().sum::<usize>())
    });
    row("Payments / bare consume (decoded)", &|r| {
        format!("{:.4}", r.rate() / decoded)
    });
    row("Sandbox ledger: charges recorded, each once", &|r| {
        format!(
            "{} {}",
            r.ledger_charges,
            if r.ledger_once { "yes" } else { "NO" }
        )
    });
    row("Provider calls / action failures (service metrics)", &|r| {
        format!("{:.0} / {:.0}", r.provider_calls, r.action_failures)
    });
    row(
        "Mean time a charge holds one of the service's workers (concurrency ÷ payments/s)",
        &|r| {
            format!(
                "{:.0} ms",
                1000.0 * r.concurrency as f64 / r.rate().max(1e-9)
            )
        },
    );
    row("Cassandra CPU per payment", &|r| {
        let cores = r
            .cpu
            .iter()
            .find(|(name, _)| name == "cassandra")
            .map_or(0.0, |(_, c)| *c);
        format!(
            "{:.2} ms",
            1000.0 * cores * r.cpu_wall_s / r.succeeded.max(1) as f64
        )
    });
    row("Payments peak memory (VmHWM)", &|r| {
        format!("{:.0} MiB", r.hwm_mib)
    });
    row("CPU during the measured phase, cores", &|r| {
        let parts: Vec<String> = r
            .cpu
            .iter()
            .map(|(name, c)| format!("{name} {c:.2}"))
            .collect();
        format!(
            "{} (machine busy {:.0} %)",
            parts.join(", "),
            100.0 * r.busy
        )
    });
    row("Warm-up: invoices paid after the service started", &|r| {
        format!("{} in {:.1} s", r.warmup_invoices, r.warmup_s)
    });
    row(
        "Webhook deliveries/s, first → N-th distinct `payment.succeeded` received (one endpoint per tenant)",
        &|r| match &r.webhooks {
            Some(w) => format!(
                "{} ({:.2} s; first after {:.2} s; {} requests)",
                grouped(w.rate()),
                w.last_s - w.first_s,
                w.first_s,
                w.requests
            ),
            None => "not measured".into(),
        },
    );
    println!(
        "| Baseline: bare consume of {n} `billing.invoices` messages, bytes only | {} events/s ({:.2} s) |",
        grouped(nf / b.raw_s),
        b.raw_s
    );
    println!(
        "| Baseline: bare consume, each decoded as `InvoiceEvent` | {} events/s ({:.2} s) |",
        grouped(decoded),
        b.decoded_s
    );
}

/// The group id of the bench's own consumers of a round (assigned, never joined or committed; librdkafka wants one).
fn watch_group(settings: &Settings) -> String {
    format!("{}watch", settings.kafka.topic_prefix)
}

/// End offset of every partition of `topic`.
async fn end_offsets(settings: &Settings, topic: &str) -> anyhow::Result<Vec<i64>> {
    let brokers = settings.kafka.brokers.clone();
    let partitions = settings.kafka.partitions;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        (0..partitions)
            .map(|p| {
                Ok(consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))?
                    .1)
            })
            .collect()
    })
    .await?
}

/// What a [`Watcher`] saw.
struct Watched {
    first: Option<Instant>,
    last: Option<Instant>,
    succeeded: usize,
    /// Failed attempts by code, for invoices without a success.
    failed: BTreeMap<String, usize>,
}

/// Reads `billing.payments` (a plain consumer, assigned, never joining its group) and counts the invoices of some
/// tenants that ended: paid (`PaymentSucceeded`) or failed (`PaymentFailed`; nothing retries them, their clock never
/// ticks).
struct Watcher {
    task: tokio::task::JoinHandle<anyhow::Result<Watched>>,
    stop: Arc<AtomicBool>,
}

impl Watcher {
    /// Start reading from `from` (per partition), or from the beginning; ends after `n` invoices.
    fn start(
        settings: &Settings,
        topic: &str,
        from: Option<Vec<i64>>,
        tenants: HashSet<String>,
        n: usize,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("group.id", watch_group(settings))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..settings.kafka.partitions {
            let offset = match &from {
                Some(ends) => Offset::Offset(ends[p as usize]),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, offset)?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut out = Watched {
                first: None,
                last: None,
                succeeded: 0,
                failed: BTreeMap::new(),
            };
            let mut ended: HashSet<(String, String)> = HashSet::new();
            while ended.len() < n && !flag.load(Ordering::Relaxed) {
                let Some(m) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let m = m?;
                let ev: PaymentEvent = billing_schemas::decode(
                    m.payload().unwrap_or_default(),
                    kafka::content_type(&m),
                )?;
                if !tenants.contains(&ev.tenant_id) {
                    continue;
                }
                // An invoice ends with its first outcome; `None` is a success, else the failure's code.
                let (invoice, failure) = match &ev.payload {
                    Payment::PaymentSucceeded(p) => (&p.invoice_id, None),
                    Payment::PaymentFailed(f) => (&f.invoice_id, Some(&f.code)),
                    _ => continue,
                };
                if !ended.insert((ev.tenant_id.clone(), invoice.clone())) {
                    continue;
                }
                match failure {
                    None => {
                        let now = Instant::now();
                        out.first.get_or_insert(now);
                        out.last = Some(now);
                        out.succeeded += 1;
                    }
                    Some(code) => *out.failed.entry(code.clone()).or_default() += 1,
                }
            }
            Ok(out)
        });
        Ok(Watcher { task, stop })
    }

    /// Wait for the `n` invoices, failing when a child exits or after `timeout`.
    async fn wait(self, timeout: Duration, children: &mut Children) -> anyhow::Result<Watched> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.task.is_finished() {
                return self.task.await?;
            }
            let problem = children.check_alive().err().or_else(|| {
                (Instant::now() >= deadline).then(|| {
                    anyhow::anyhow!("payments did not end the invoices within {timeout:?}")
                })
            });
            if let Some(e) = problem {
                self.stop.store(true, Ordering::Relaxed);
                let seen = self.task.await??;
                return Err(e.context(format!("{} paid, {:?} failed", seen.succeeded, seen.failed)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Baseline: read `n` messages of `topic` from the earliest offsets with a plain consumer (assigned, never joining its
/// group), touching every byte, or decoding each as the payments service does. Returns the seconds from the first
/// message.
async fn bare_consume(
    settings: &Settings,
    topic: &str,
    n: u64,
    decode: bool,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let brokers = settings.kafka.brokers.clone();
    let partitions = settings.kafka.partitions;
    let topic = topic.to_owned();
    let group = watch_group(settings);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let t0 = Instant::now();
        let mut first: Option<Instant> = None;
        let (mut count, mut touched) = (0u64, 0u64);
        while count < n {
            anyhow::ensure!(t0.elapsed() < timeout, "bare consumer read {count} of {n}");
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            first.get_or_insert_with(Instant::now);
            let payload = m.payload().unwrap_or_default();
            if decode {
                let ev: InvoiceEvent = billing_schemas::decode(payload, kafka::content_type(&m))?;
                touched = touched.wrapping_add(ev.event_id.len() as u64);
            } else {
                touched = touched.wrapping_add(payload.iter().map(|&b| u64::from(b)).sum::<u64>());
            }
            count += 1;
        }
        std::hint::black_box(touched);
        Ok(first.unwrap_or(t0).elapsed().as_secs_f64())
    })
    .await?
}

/// What the receiver got.
#[derive(Default, Clone)]
struct Received {
    requests: u64,
    events: HashSet<String>,
    first: Option<Instant>,
    /// When the N-th distinct event arrived.
    nth: Option<Instant>,
}

/// A webhook receiver: plain HTTP/1.1 over tokio (keep-alive, `Content-Length` bodies), answering 200 at once and
/// counting requests and distinct `Billing-Event-Id`s. No signature check: it measures the dispatcher.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<Received>>,
    target: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(target: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(free_addr()?).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve_connection(stream, shared.clone(), target));
            }
        });
        Ok(Receiver {
            addr,
            state,
            target,
            task,
        })
    }

    fn events(&self) -> usize {
        self.state.lock().expect("receiver lock").events.len()
    }

    fn done(&self) -> bool {
        self.events() >= self.target
    }

    fn snapshot(&self) -> Received {
        self.state.lock().expect("receiver lock").clone()
    }

    fn stop(self) {
        // Aborting the accept loop drops its JoinSet, which aborts the connections.
        self.task.abort();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<Received>>,
    target: usize,
) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let event_header = billing_webhooks::signing::EVENT_ID_HEADER.to_ascii_lowercase();
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (mut length, mut event) = (0usize, None);
        loop {
            line.clear();
            match read.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                if name == "content-length" {
                    length = value.trim().parse().unwrap_or(0);
                } else if name == event_header {
                    event = Some(value.trim().to_owned());
                }
            }
        }
        let mut body = vec![0; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        {
            let now = Instant::now();
            let mut s = state.lock().expect("receiver lock");
            s.requests += 1;
            s.first.get_or_insert(now);
            if let Some(e) = event {
                s.events.insert(e);
            }
            if s.nth.is_none() && s.events.len() >= target {
                s.nth = Some(now);
            }
        }
        if write
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The stack's servers the payments figures show, found by their command lines (read only).
const PAYMENTS_SERVERS: &[(&str, &str)] =
    &[("cassandra", "CassandraDaemon"), ("kafka", "kafka.Kafka")];

/// Drop the bench's keyspace, ClickHouse database, every round's topics and consumer groups.
async fn cleanup(settings: &Settings, id: &str, rounds: &[Round]) {
    // The topics of the migration's own prefix, then each round's.
    let mut prefixes = vec![settings.kafka.topic_prefix.clone()];
    let mut groups = Vec::new();
    for round in rounds {
        let Ok(s) = round.settings(settings, id) else {
            continue;
        };
        prefixes.push(s.kafka.topic_prefix.clone());
        groups.push(s.payments.group_id.clone());
        groups.push(s.webhooks.group_id.clone());
        groups.push(watch_group(&s));
    }
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    drop_environment(settings, &prefixes, &groups).await;
    println!("cleaned up: keyspace, database, topics and groups of bench-payments {id}");
}
