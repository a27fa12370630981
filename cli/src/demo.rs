//! `billing demo`: the pipeline with a small workload. It migrates and starts rating, the invoicer and the query
//! API in this process, then runs two workloads:
//!
//! - **usage**: a catalog and a few customers published straight to Kafka (as an integration would), usage for
//!   them (Avro and JSON, plus a few malformed messages), until the usage API shows every event priced;
//! - **billing**: two months of a small SaaS business driven through the HTTP management API only, on a test
//!   clock: a metric, four plans, twenty customers and their subscriptions (mid-month starts, anniversary billing,
//!   an upgrade, a downgrade, a pause and resume, a cancellation at period end, a trial, a grace period, another
//!   currency), usage for January and February (and January usage of one customer that arrives after its January
//!   invoice: an adjustment line in March), then the clock advanced to March 4 so that the invoicer bills every
//!   billing date on the way. It prints the invoices and where to look.
//!
//! The billing workload uses a tenant of its own per run (`<tenant>-<6 hex>`), so running the demo again starts
//! from a clean slate and gets the same amounts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::publish::Publisher;
use billing_runtime::{Settings, Shutdown};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// Demo options.
#[derive(clap::Args)]
pub struct Args {
    /// Tenant the usage workload belongs to; the billing workload uses `<tenant>-<6 hex>`, new at every run.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Customers to generate usage for (usage workload).
    #[arg(long, default_value_t = 5)]
    customers: u32,
    /// Usage events per customer (usage workload).
    #[arg(long, default_value_t = 200)]
    events_per_customer: u32,
    /// Skip the billing workload (test clock, invoices).
    #[arg(long)]
    no_billing: bool,
    /// Stop once the workload is visible instead of serving until Ctrl-C.
    #[arg(long)]
    exit_when_done: bool,
}

/// Timeout of one API request that does not wait for a bill run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write may wait for read-your-writes (`wait_seconds`); the request timeout is longer.
const WRITE_WAIT_SECONDS: u64 = 60;
/// How long a clock advance may wait for the bill runs (`wait_seconds`, at most 300).
const ADVANCE_WAIT_SECONDS: u64 = 300;

pub async fn run(settings: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let report = billing_store::migrate::run(&settings)
        .await
        .context("migration failed")?;
    println!("migrated: {report}");

    let mut rating = tokio::spawn(billing_rating::run(settings.clone(), stop.clone()));
    let mut invoicer = tokio::spawn(billing_invoicer::run(settings.clone(), stop.clone()));
    let mut payments = tokio::spawn(billing_payments::run(settings.clone(), stop.clone()));
    let mut webhooks = tokio::spawn(billing_webhooks::run(settings.clone(), stop.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut api = tokio::spawn(billing_query_api::run(
        settings.clone(),
        stop.clone(),
        move |addr| {
            let _ = tx.send(addr);
        },
    ));
    let api_addr = rx.await.context("query-api did not start")?;
    let base = format!("http://{api_addr}");
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()?;

    // A service that stops while the workload runs fails the demo with its error instead of a timeout later.
    let workload = async {
        let usage_lines = usage_workload(&settings, &args, &http, &base).await?;
        let billing_lines = if args.no_billing {
            Vec::new()
        } else {
            billing_workload(&settings, &args, &http, &base).await?
        };
        anyhow::Ok((usage_lines, billing_lines))
    };
    let ended = |name: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>| {
        let why = match r {
            Ok(Ok(())) => "without an error".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        anyhow::anyhow!("{name} stopped during the demo: {why}")
    };
    let (usage_lines, billing_lines) = tokio::select! {
        r = workload => match r {
            Ok(lines) => lines,
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        },
        r = &mut rating => { stop.cancel(); return Err(ended("rating", r)) },
        r = &mut invoicer => { stop.cancel(); return Err(ended("the invoicer", r)) },
        r = &mut payments => { stop.cancel(); return Err(ended("payments", r)) },
        r = &mut webhooks => { stop.cancel(); return Err(ended("webhooks", r)) },
        r = &mut api => { stop.cancel(); return Err(ended("query-api", r)) },
    };

    println!();
    println!("Where to look:");
    for l in usage_lines.iter().chain(&billing_lines) {
        println!("  {l}");
    }
    println!(
        "  health/metrics: http://{0}/ready http://{0}/metrics (rating), http://{1}/ready http://{1}/metrics (invoicer), http://{2}/metrics (payments), http://{3}/metrics (webhooks)",
        settings.rating.listen, settings.invoicer.listen, settings.payments.listen, settings.webhooks.listen
    );
    if args.exit_when_done {
        stop.cancel();
    } else {
        println!("Serving until Ctrl-C.");
    }
    api.await??;
    webhooks.await??;
    payments.await??;
    invoicer.await??;
    rating.await??;
    Ok(())
}

// ---- the usage workload ----

/// Publish the usage catalog and customers, produce usage (and a few malformed messages), wait until the usage
/// API shows every event; answer the "where to look" lines.
async fn usage_workload(
    settings: &Settings,
    args: &Args,
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<String>> {
    println!();
    println!(
        "== Usage: {} customers of tenant {:?}",
        args.customers, args.tenant
    );
    let topics = Topics::new(&settings.kafka);
    let producer = kafka::producer(&settings.kafka)?;
    publish_reference(&Publisher::new(&settings.kafka)?, args).await?;
    let key = crate::keys::demo_key(settings, &args.tenant).await?;
    let mut before = BTreeMap::new();
    for c in 0..args.customers {
        let customer = format!("customer-{c:03}");
        let seen = usage_of(http, base, &key, &customer).await["events_count"].as_u64();
        before.insert(customer, seen.unwrap_or(0));
    }
    // Event times fall in one fixed month so that re-running the demo adds to the same totals visibly.
    let base_time = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut expected: BTreeMap<String, (u64, Decimal)> = BTreeMap::new();
    let mut sent = Vec::new();
    for c in 0..args.customers {
        let customer_id = format!("customer-{c:03}");
        for i in 0..args.events_per_customer {
            let value = Decimal::new(i64::from(i % 10) * 25 + 5, 2); // 0.05 … 2.30
            let ev = UsageEvent {
                tenant_id: args.tenant.clone(),
                event_id: format!("{run_id}-{c}-{i}"),
                customer_id: customer_id.clone(),
                metric_code: "api_calls".into(),
                timestamp: base_time + chrono::Duration::seconds(i64::from(i) * 60),
                properties: BTreeMap::from([("value".to_owned(), value.to_string())]),
            };
            // Alternate encodings, as real producers would.
            let encoding = if i % 2 == 0 {
                Encoding::Avro
            } else {
                Encoding::Json
            };
            sent.push(send_usage(&producer, &topics, &ev, encoding)?);
            let entry = expected.entry(customer_id.clone()).or_default();
            entry.0 += 1;
            entry.1 += value;
        }
    }
    // A few bad messages: they must land in the dead-letter topic without stopping rating.
    for (i, bad) in [
        b"not json at all".to_vec(),
        vec![0, 0, 0, 0, 99, 1, 2],
        br#"{"tenant_id":"demo"}"#.to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        producer
            .send(
                FutureRecord::to(&topics.usage)
                    .key(&format!("{}/bad-{i}", args.tenant))
                    .payload(&bad),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    }
    for d in sent {
        billing_runtime::publish::ack(d).await?;
    }
    let total: u64 = expected.values().map(|v| v.0).sum();
    println!(
        "produced {total} usage events for {} customers, and 3 malformed messages",
        args.customers
    );
    wait_until_visible(http, base, &key, &expected, &before).await?;
    Ok(vec![
        format!(
            "usage API:    curl -s -H 'Authorization: Bearer {key}' '{base}/v1/customers/customer-000/usage?at=2026-11-15T00:00:00Z'"
        ),
        format!(
            "usage in ClickHouse: clickhouse-client --query \"SELECT customer_id, count(), sum(value) FROM {}.usage_events FINAL WHERE tenant_id = '{}' GROUP BY customer_id ORDER BY customer_id\"",
            settings.clickhouse.database, args.tenant
        ),
        format!(
            "dead letters: kcat -b {} -C -t {} -e -f '%h %s\\n'",
            settings.kafka.brokers, topics.usage_dlq
        ),
    ])
}

/// Enqueue one usage event with its content-type header; the returned future resolves on the broker's ack.
fn send_usage(
    producer: &FutureProducer,
    topics: &Topics,
    ev: &UsageEvent,
    encoding: Encoding,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let payload = encode(ev, encoding)?;
    let key = customer_key(&ev.tenant_id, &ev.customer_id);
    let headers = OwnedHeaders::new().insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(encoding.content_type()),
    });
    producer
        .send_result(
            FutureRecord::to(&topics.usage)
                .key(&key)
                .payload(&payload)
                .headers(headers),
        )
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
}

/// Poll the API until each customer's event count reaches at least what this run produced.
async fn wait_until_visible(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    expected: &BTreeMap<String, (u64, Decimal)>,
    before: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for customer in expected.keys() {
        // Earlier demo runs add to the same period: wait for this run's events on top of what was there.
        let want = before.get(customer).copied().unwrap_or(0) + expected[customer].0;
        loop {
            let charge = usage_of(http, base, key, customer).await;
            if charge["events_count"].as_u64().unwrap_or(0) >= want {
                println!(
                    "  {customer}: {} events, {} units, {} {}",
                    charge["events_count"], charge["units"], charge["amount"], charge["currency"]
                );
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "usage of {customer} not visible after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The demo charge's usage of a customer in November 2026, as the API serves it to `key` (null when absent).
async fn usage_of(http: &reqwest::Client, base: &str, key: &str, customer: &str) -> Value {
    let url = format!("{base}/v1/customers/{customer}/usage?at=2026-11-15T00:00:00Z");
    let doc = async {
        http.get(url)
            .bearer_auth(key)
            .send()
            .await?
            .json::<Value>()
            .await
    }
    .await
    .unwrap_or_default();
    doc["charges"][0].clone()
}

/// The demo catalog and customers: a metric summing `value`, a plan pricing it in tiers, and one subscription per
/// customer from November 1st. Published before any usage, as a real integration would.
async fn publish_reference(publisher: &Publisher, args: &Args) -> anyhow::Result<()> {
    use billing_schemas::catalog::{
        Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan,
    };
    use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
    let start = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let tenant = &args.tenant;
    let metric = CatalogEvent::metric(
        tenant,
        start,
        "api_calls",
        Aggregation::Sum,
        Some("value"),
        vec![],
    );
    // 100 units free, then 1 EUR flat plus 0.05 EUR per unit.
    let tiers = r#"{"graduated_ranges":[
        {"from_value":0,"to_value":100,"per_unit_amount":"0","flat_amount":"0"},
        {"from_value":100,"to_value":null,"per_unit_amount":"0.05","flat_amount":"1"}]}"#;
    let plan = CatalogEvent::plan(
        tenant,
        start,
        Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: "starter".into(),
            name: "Starter".into(),
            interval: Interval::Monthly,
            currency: "EUR".into(),
            amount: "29.00".into(),
            pay_in_advance: true,
            trial_period_days: 0,
            charges: vec![Charge::on_metric(
                "api_calls",
                "api_calls",
                ChargeModel::Graduated,
                tiers,
            )],
        },
    );
    publisher.catalog(&metric, Encoding::Json).await?;
    publisher.catalog(&plan, Encoding::Json).await?;
    for c in 0..args.customers {
        let customer_id = format!("customer-{c:03}");
        let customer = CustomerCreated {
            billing_country: Some("FR".into()),
            ..CustomerCreated::new(
                &customer_id,
                &format!("Demo customer {c}"),
                "EUR",
                "Europe/Paris",
            )
        };
        for ev in LifecycleEvent::customer_subscribed(
            tenant,
            customer,
            &format!("sub-{customer_id}"),
            "starter",
            start,
        ) {
            publisher.lifecycle(&ev, Encoding::Avro).await?;
        }
    }
    Ok(())
}

// ---- the billing workload, through the HTTP API ----

/// A customer of the billing workload and the story it tells.
struct DemoCustomer {
    id: &'static str,
    name: &'static str,
    currency: &'static str,
    timezone: &'static str,
    grace_days: u32,
    net_days: u32,
    plan: &'static str,
    /// `calendar` or `anniversary`.
    billing_time: &'static str,
    anchor_day: Option<u32>,
    /// The day (on the test clock) it subscribes, at midnight UTC.
    signup: u32,
    trial_ends_at: Option<&'static str>,
    /// API calls a day in January (20 % more in February), in two usage events.
    calls_per_day: u32,
    /// Days without usage (paused), inclusive, as January days.
    quiet: Option<(u32, u32)>,
    /// Last day of usage, as a (month, day).
    usage_until: (u32, u32),
    /// Tax codes of the customer.
    tax_codes: &'static [&'static str],
    /// A coupon applied when it subscribes.
    coupon: Option<&'static str>,
    /// Credits granted to a wallet when it is created.
    wallet_credits: Option<&'static str>,
    story: &'static str,
}

/// What happens to a subscription on a day of January (the clock is advanced to that day first).
enum Act {
    Change(&'static str),
    Pause,
    Resume,
    CancelAtPeriodEnd,
}

const fn customer(
    id: &'static str,
    name: &'static str,
    plan: &'static str,
    signup: u32,
    calls_per_day: u32,
    story: &'static str,
) -> DemoCustomer {
    DemoCustomer {
        id,
        name,
        currency: "EUR",
        timezone: "UTC",
        grace_days: 0,
        net_days: 0,
        plan,
        billing_time: "calendar",
        anchor_day: None,
        signup,
        trial_ends_at: None,
        calls_per_day,
        quiet: None,
        usage_until: (2, 28),
        tax_codes: &[],
        coupon: None,
        wallet_credits: None,
        story,
    }
}

/// Twenty-three customers: who they are, which plan, when they sign up, how much they use.
fn demo_customers() -> Vec<DemoCustomer> {
    vec![
        customer(
            "alpine-bakery",
            "Alpine Bakery",
            "starter",
            1,
            800,
            "starter, calendar, fee in advance + usage",
        ),
        DemoCustomer {
            net_days: 30,
            ..customer(
                "baltic-freight",
                "Baltic Freight",
                "starter",
                1,
                1500,
                "net 30 days: due date a month after issue",
            )
        },
        customer(
            "cedar-labs",
            "Cedar Labs",
            "growth",
            1,
            9000,
            "growth: graduated tiers over 10,000 and 100,000 calls",
        ),
        customer(
            "delta-dental",
            "Delta Dental",
            "growth",
            1,
            2000,
            "growth, mostly inside the free tier",
        ),
        customer(
            "ember-games",
            "Ember Games",
            "payg",
            1,
            3000,
            "pay as you go: fee and usage in arrears",
        ),
        DemoCustomer {
            grace_days: 3,
            ..customer(
                "fjord-media",
                "Fjord Media",
                "payg",
                1,
                1200,
                "3-day grace period: a draft first, finalized 3 days later",
            )
        },
        DemoCustomer {
            billing_time: "anniversary",
            ..customer(
                "granite-law",
                "Granite Law",
                "starter",
                10,
                400,
                "anniversary billing from Jan 10",
            )
        },
        DemoCustomer {
            billing_time: "anniversary",
            ..customer(
                "harbor-cafe",
                "Harbor Cafe",
                "payg",
                20,
                600,
                "anniversary, in arrears from Jan 20: first bill Feb 20",
            )
        },
        DemoCustomer {
            billing_time: "anniversary",
            ..customer(
                "indigo-health",
                "Indigo Health",
                "growth",
                15,
                5000,
                "anniversary billing from Jan 15, growth",
            )
        },
        customer(
            "juniper-retail",
            "Juniper Retail",
            "starter",
            15,
            700,
            "signs up Jan 15: 17/31 of the fee",
        ),
        customer(
            "kestrel-air",
            "Kestrel Air",
            "payg",
            15,
            2500,
            "signs up Jan 15, in arrears: prorated fee on Feb 1",
        ),
        customer(
            "lumen-energy",
            "Lumen Energy",
            "starter",
            1,
            6000,
            "upgraded to growth on Jan 15: credit + prorated growth fee",
        ),
        DemoCustomer {
            quiet: Some((10, 19)),
            ..customer(
                "meridian-ship",
                "Meridian Shipping",
                "starter",
                1,
                1000,
                "paused Jan 10, resumed Jan 20: 10 days credited",
            )
        },
        DemoCustomer {
            usage_until: (1, 31),
            ..customer(
                "nimbus-cloud",
                "Nimbus Cloud",
                "starter",
                1,
                1800,
                "cancels on Jan 20, at period end: January usage, no February fee",
            )
        },
        DemoCustomer {
            currency: "USD",
            ..customer(
                "orchid-spa",
                "Orchid Spa",
                "starter-usd",
                1,
                900,
                "billed in USD on a USD plan",
            )
        },
        DemoCustomer {
            timezone: "Europe/Paris",
            ..customer(
                "pioneer-bikes",
                "Pioneer Bikes",
                "starter",
                15,
                500,
                "Europe/Paris: billed at midnight in Paris (23:00 UTC)",
            )
        },
        customer(
            "quartz-studio",
            "Quartz Studio",
            "growth",
            1,
            1500,
            "downgrade to starter on Jan 15, at period end: Jan usage + Feb starter fee",
        ),
        DemoCustomer {
            billing_time: "anniversary",
            ..customer(
                "riverside-school",
                "Riverside School",
                "payg",
                10,
                1100,
                "anniversary, in arrears from Jan 10",
            )
        },
        DemoCustomer {
            trial_ends_at: Some("2026-01-15T00:00:00Z"),
            ..customer(
                "summit-gear",
                "Summit Gear",
                "starter",
                1,
                1300,
                "trial until Jan 15: first fee from then",
            )
        },
        DemoCustomer {
            anchor_day: Some(15),
            ..customer(
                "tundra-tools",
                "Tundra Tools",
                "starter",
                1,
                1000,
                "anchored on the 15th: Jan 1-14 prorated, then 15th to 14th",
            )
        },
        DemoCustomer {
            timezone: "Europe/Paris",
            tax_codes: &["vat_fr"],
            ..customer(
                "vega-vat",
                "Vega VAT",
                "starter",
                1,
                900,
                "French VAT: 20 % on every line (tax vat_fr)",
            )
        },
        DemoCustomer {
            coupon: Some("welcome25"),
            ..customer(
                "wren-promo",
                "Wren Promo",
                "growth",
                1,
                2500,
                "coupon welcome25: 25 % off its first two invoices",
            )
        },
        DemoCustomer {
            wallet_credits: Some("60.00"),
            ..customer(
                "yarrow-prepaid",
                "Yarrow Prepaid",
                "starter",
                1,
                700,
                "wallet of 60.00 granted credits: pays its invoices until it runs out",
            )
        },
    ]
}

/// The subscription changes, by January day.
fn demo_acts() -> Vec<(u32, &'static str, Act)> {
    vec![
        (10, "meridian-ship", Act::Pause),
        (15, "lumen-energy", Act::Change("growth")),
        (15, "quartz-studio", Act::Change("starter")),
        (20, "meridian-ship", Act::Resume),
        (20, "nimbus-cloud", Act::CancelAtPeriodEnd),
    ]
}

/// The subscription id of a demo customer.
fn sub_id(customer: &str) -> String {
    format!("sub-{customer}")
}

fn day(month: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, d, 0, 0, 0)
        .single()
        .expect("valid date")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The usage events of one customer over January and February: two a day from its sign-up, none on quiet days.
fn usage_events(tenant: &str, index: usize, c: &DemoCustomer) -> Vec<UsageEvent> {
    let mut out = Vec::new();
    let first = NaiveDate::from_ymd_opt(2026, 1, c.signup).expect("valid date");
    let last = NaiveDate::from_ymd_opt(2026, c.usage_until.0, c.usage_until.1).expect("valid date");
    for (n, date) in first.iter_days().take_while(|d| *d <= last).enumerate() {
        use chrono::Datelike;
        if let Some((from, to)) = c.quiet {
            if date.month() == 1 && (from..=to).contains(&date.day()) {
                continue;
            }
        }
        // The day's calls (20 % more in February), split unevenly over two events; the day's total is exact.
        let growth = if date.month() == 2 { 120 } else { 100 };
        let total = u64::from(c.calls_per_day) * growth / 100;
        let jitter = ((n * 37 + index * 11) % 21) as u64; // 0..=20: the morning gets 45 % to 55 %
        let morning = total * (90 + jitter) / 200;
        for (slot, hour, calls) in [("am", 9, morning), ("pm", 15, total - morning)] {
            let at = date.and_hms_opt(hour, 0, 0).expect("valid time").and_utc();
            out.push(UsageEvent {
                tenant_id: tenant.to_owned(),
                event_id: format!("{}-{date}-{slot}", c.id),
                customer_id: c.id.to_owned(),
                metric_code: "api_calls".into(),
                timestamp: at,
                properties: BTreeMap::from([("value".to_owned(), calls.to_string())]),
            });
        }
    }
    out
}

/// The catalog: a metric and four monthly plans (three in EUR, one in USD).
fn demo_catalog() -> (Value, Vec<Value>) {
    let metric = json!({
        "code": "api_calls", "name": "API calls", "aggregation": "sum", "field_name": "value",
    });
    let standard = |id: &str, amount: &str| {
        json!({"id": id, "billable_metric_code": "api_calls", "charge_model": "standard",
               "properties": {"amount": amount}})
    };
    let plans = vec![
        json!({"code": "starter", "name": "Starter", "interval": "monthly", "currency": "EUR",
               "amount": "29.00", "pay_in_advance": true,
               "charges": [standard("calls-starter", "0.002")]}),
        json!({"code": "growth", "name": "Growth", "interval": "monthly", "currency": "EUR",
               "amount": "99.00", "pay_in_advance": true,
               "charges": [{"id": "calls-growth", "billable_metric_code": "api_calls", "charge_model": "graduated",
                            "properties": {"graduated_ranges": [
                                {"from_value": 0, "to_value": 10000, "per_unit_amount": "0", "flat_amount": "0"},
                                {"from_value": 10000, "to_value": 100000, "per_unit_amount": "0.0015", "flat_amount": "0"},
                                {"from_value": 100000, "to_value": null, "per_unit_amount": "0.001", "flat_amount": "0"}]}}]}),
        json!({"code": "payg", "name": "Pay as you go", "interval": "monthly", "currency": "EUR",
               "amount": "5.00", "pay_in_advance": false,
               "charges": [standard("calls-payg", "0.003")]}),
        json!({"code": "starter-usd", "name": "Starter (USD)", "interval": "monthly", "currency": "USD",
               "amount": "32.00", "pay_in_advance": true,
               "charges": [standard("calls-starter-usd", "0.0025")]}),
    ];
    (metric, plans)
}

/// The management API as a client sees it: one tenant, a timeout on every request, retries of rate-limited
/// requests, and an `Idempotency-Key` on every write so that a retry after a timeout is safe.
struct Api {
    http: reqwest::Client,
    base: String,
    /// An admin key of the tenant.
    key: String,
}

impl Api {
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let key = (method == Method::POST).then(|| uuid::Uuid::new_v4().simple().to_string());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.key)
                .timeout(timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = &key {
                req = req.header("idempotency-key", k);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    // Rate limited, or (on a retry) the first attempt with this key still running.
                    let busy = status == StatusCode::TOO_MANY_REQUESTS
                        || (status == StatusCode::CONFLICT && attempt > 1);
                    if busy && attempt < 10 {
                        let wait = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        continue;
                    }
                    let text = resp
                        .text()
                        .await
                        .with_context(|| format!("{method} {path}: reading the answer"))?;
                    let doc = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return Ok((status, doc));
                }
                Err(e) if attempt < 3 && (e.is_timeout() || e.is_connect()) => {
                    println!("  {method} {path}: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("{method} {path}"))),
            }
        }
    }

    /// GET, expecting 200.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, doc) = self
            .request(Method::GET, path, None, REQUEST_TIMEOUT)
            .await?;
        expect(&Method::GET, path, status, doc, &[StatusCode::OK])
    }

    /// A write that waits for its effect to be readable, expecting 200 or 201.
    async fn write(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let path = format!("{path}?wait_seconds={WRITE_WAIT_SECONDS}");
        let timeout = Duration::from_secs(WRITE_WAIT_SECONDS) + REQUEST_TIMEOUT;
        let (status, doc) = self
            .request(Method::POST, &path, Some(&body), timeout)
            .await?;
        expect(
            &Method::POST,
            &path,
            status,
            doc,
            &[StatusCode::OK, StatusCode::CREATED],
        )
    }

    /// Every item of a list, following `starting_after`.
    async fn list(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let page = match out.last() {
                None => self.get(&format!("{path}{sep}limit=100")).await?,
                Some(last) => {
                    let id = last["invoice_id"].as_str().unwrap_or_default();
                    self.get(&format!("{path}{sep}limit=100&starting_after={id}"))
                        .await?
                }
            };
            out.extend(page["data"].as_array().cloned().unwrap_or_default());
            if page["has_more"] != json!(true) {
                return Ok(out);
            }
        }
    }

    /// Create a test clock at `t` and wait until every lifecycle partition has it.
    async fn create_clock(&self, t: DateTime<Utc>) -> anyhow::Result<String> {
        let path = format!("/v1/test_clocks?wait_seconds={ADVANCE_WAIT_SECONDS}");
        let body = json!({"frozen_time": rfc3339(t), "name": "billing demo"});
        let timeout = Duration::from_secs(ADVANCE_WAIT_SECONDS) + REQUEST_TIMEOUT;
        let (status, doc) = self
            .request(Method::POST, &path, Some(&body), timeout)
            .await?;
        let doc = expect(
            &Method::POST,
            &path,
            status,
            doc,
            &[StatusCode::CREATED, StatusCode::ACCEPTED],
        )?;
        let id = doc["id"]
            .as_str()
            .context("the test clock has no id")?
            .to_owned();
        self.clock_ready(&id, t, status).await?;
        Ok(id)
    }

    /// Advance the clock to `t` and wait until its bill runs are done.
    async fn advance(&self, clock: &str, t: DateTime<Utc>) -> anyhow::Result<()> {
        let path = format!("/v1/test_clocks/{clock}/advance");
        let body = json!({"frozen_time": rfc3339(t), "wait_seconds": ADVANCE_WAIT_SECONDS});
        let timeout = Duration::from_secs(ADVANCE_WAIT_SECONDS) + REQUEST_TIMEOUT;
        let (status, doc) = self
            .request(Method::POST, &path, Some(&body), timeout)
            .await?;
        expect(
            &Method::POST,
            &path,
            status,
            doc,
            &[StatusCode::OK, StatusCode::ACCEPTED],
        )?;
        self.clock_ready(clock, t, status).await
    }

    /// After a tick answered `status`: when it was 202 (still advancing), poll the clock until it is ready at `t`.
    async fn clock_ready(
        &self,
        clock: &str,
        t: DateTime<Utc>,
        status: StatusCode,
    ) -> anyhow::Result<()> {
        if status != StatusCode::ACCEPTED {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let doc = self.get(&format!("/v1/test_clocks/{clock}")).await?;
            let now = doc["now"]
                .as_str()
                .and_then(|s| s.parse::<DateTime<Utc>>().ok());
            if doc["status"] == "ready" && now.is_some_and(|n| n >= t) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "test clock {clock} not ready at {t} after 600 s: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The answer's body when its status is one of `ok`, else an error naming the request and the problem.
fn expect(
    method: &Method,
    path: &str,
    status: StatusCode,
    doc: Value,
    ok: &[StatusCode],
) -> anyhow::Result<Value> {
    if ok.contains(&status) {
        return Ok(doc);
    }
    let detail = doc["detail"]
        .as_str()
        .map_or_else(|| doc.to_string(), str::to_owned);
    if status == StatusCode::ACCEPTED {
        anyhow::bail!("{method} {path}: still pending after {WRITE_WAIT_SECONDS} s (is the invoicer running?): {doc}");
    }
    anyhow::bail!("{method} {path}: {status}: {detail}")
}

/// A decimal amount of a JSON document (a string, or a number).
fn amount(v: &Value) -> Decimal {
    match v {
        Value::String(s) => s.parse().unwrap_or_default(),
        other => other.to_string().parse().unwrap_or_default(),
    }
}

/// Drive two months of billing through the API on a test clock and print what came out; answer the "where to
/// look" lines.
async fn billing_workload(
    settings: &Settings,
    args: &Args,
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<String>> {
    let tenant = format!(
        "{}-{}",
        args.tenant,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let api = Api {
        http: http.clone(),
        base: base.to_owned(),
        key: crate::keys::demo_key(settings, &tenant).await?,
    };
    let customers = demo_customers();
    let acts = demo_acts();
    println!();
    println!(
        "== Billing: {} customers of tenant {tenant:?} on a test clock, through the API at {base}",
        customers.len()
    );
    let started = Instant::now();
    let clock = api.create_clock(day(1, 1)).await?;
    let (metric, plans) = demo_catalog();
    api.write("/v1/billable_metrics", metric).await?;
    for p in plans {
        api.write("/v1/plans", p).await?;
    }
    api.write(
        "/v1/taxes",
        json!({"code": "vat_fr", "name": "TVA 20 %", "rate": "20"}),
    )
    .await?;
    api.write(
        "/v1/coupons",
        json!({"code": "welcome25", "name": "Welcome, 25 % off", "coupon_type": "percentage",
               "percentage_rate": "25", "frequency": "recurring", "frequency_duration": 2}),
    )
    .await?;
    for c in &customers {
        let mut body = json!({
            "customer_id": c.id, "name": c.name, "currency": c.currency, "timezone": c.timezone,
            "email": format!("billing@{}.example", c.id),
            "invoice_grace_period_days": c.grace_days, "net_payment_term_days": c.net_days,
            "test_clock_id": clock,
        });
        if c.timezone == "Europe/Paris" {
            body["billing_country"] = json!("FR");
        }
        if !c.tax_codes.is_empty() {
            body["tax_codes"] = json!(c.tax_codes);
        }
        api.write("/v1/customers", body).await?;
        if let Some(credits) = c.wallet_credits {
            api.write(
                "/v1/wallets",
                json!({"customer_id": c.id, "name": "Prepaid", "granted_credits": credits}),
            )
            .await?;
        }
    }
    println!(
        "  2026-01-01  test clock {clock}; metric api_calls, plans starter, growth, payg (in arrears), starter-usd; tax vat_fr, coupon welcome25; {} customers (yarrow-prepaid with a wallet)",
        customers.len()
    );
    // Payment methods on the sandbox provider: a card that pays for everyone, except a card that is always
    // declined (dunning) and a customer who pays by bank transfer.
    for c in &customers {
        let token = match c.id {
            DECLINED => "pm_card_chargeDeclinedInsufficientFunds",
            BANK_TRANSFER => continue,
            _ => "pm_card_visa",
        };
        api.write(
            &format!("/v1/customers/{}/payment_methods", c.id),
            json!({"kind": "card", "token": token}),
        )
        .await?;
    }
    let receiver = WebhookReceiver::start().await?;
    // (Endpoints are stored by the API itself: nothing to wait for.)
    let body = json!({"url": receiver.url, "event_types": ["invoice.finalized", "payment.succeeded", "payment.failed",
                      "invoice.marked_uncollectible", "invoice.paid_out_of_band", "subscription.canceled",
                      "credit_note.created", "refund.succeeded"],
                      "description": "the demo's receiver"});
    let path = "/v1/webhook_endpoints";
    let (status, doc) = api
        .request(Method::POST, path, Some(&body), REQUEST_TIMEOUT)
        .await?;
    let endpoint = expect(&Method::POST, path, status, doc, &[StatusCode::CREATED])?;
    let endpoint_id = endpoint["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "  2026-01-01  sandbox cards for every customer ({DECLINED}: always declined; {BANK_TRANSFER}: no card, pays by bank transfer); webhook endpoint {endpoint_id} -> {}",
        receiver.url
    );
    // Usage for January and February, produced to billing.usage as time passes: before the clock moves to a day,
    // the usage of the days before it is produced and rated, as a live producer would have sent it.
    let topics = Topics::new(&settings.kafka);
    let producer = kafka::producer(&settings.kafka)?;
    let mut usage: Vec<UsageEvent> = customers
        .iter()
        .enumerate()
        .flat_map(|(i, c)| usage_events(&tenant, i, c))
        .collect();
    usage.sort_by_key(|e| e.timestamp);
    let mut usage = usage.into_iter().peekable();
    let (mut events, mut calls) = (0usize, Decimal::ZERO);

    // January, day by day where something happens (sign-ups and subscription changes at the clock's "now"), then
    // the month ends go by: every billing date on the way is billed.
    let mut days: Vec<u32> = customers
        .iter()
        .map(|c| c.signup)
        .chain(acts.iter().map(|a| a.0))
        .collect();
    days.sort_unstable();
    days.dedup();
    let mut steps: Vec<(DateTime<Utc>, String)> = days
        .into_iter()
        .map(|d| (day(1, d), String::new()))
        .collect();
    steps.extend([
        (day(2, 1), "January closes".to_owned()),
        (day(3, 1), "February closes".to_owned()),
        (day(3, 4), "fjord-media's grace period ends".to_owned()),
    ]);
    for (t, why) in steps {
        let mut done = Vec::new();
        if !why.is_empty() {
            done.push(why);
        }
        if t > day(1, 1) {
            let mut sent = Vec::new();
            // January usage that reaches rating after January's invoice was finalized: billed as an adjustment line
            // on the next invoice.
            if t == day(3, 1) {
                for ev in late_usage(&tenant) {
                    calls += ev.properties["value"].parse::<Decimal>()?;
                    sent.push(send_usage(&producer, &topics, &ev, Encoding::Json)?);
                }
                done.push(format!(
                    "{LATE_CALLS} January API calls of {LATE_CUSTOMER} arrive late, after its February 1 invoice"
                ));
            }
            while let Some(ev) = usage.next_if(|e| e.timestamp < t) {
                calls += ev.properties["value"].parse::<Decimal>()?;
                let encoding = if sent.len() % 2 == 0 {
                    Encoding::Avro
                } else {
                    Encoding::Json
                };
                sent.push(send_usage(&producer, &topics, &ev, encoding)?);
            }
            let n = sent.len();
            for d in sent {
                billing_runtime::publish::ack(d).await?;
            }
            wait_rated(settings, Duration::from_secs(120)).await?;
            events += n;
            let t0 = Instant::now();
            api.advance(&clock, t).await?;
            let invoices = api.list("/v1/invoices").await?;
            let drafts = invoices.iter().filter(|i| i["status"] == "draft").count();
            done.push(format!(
                "{n} usage events rated, then the clock is ready in {:.1} s: {} invoices finalized{}",
                t0.elapsed().as_secs_f64(),
                invoices.len() - drafts,
                match drafts {
                    0 => String::new(),
                    1 => ", 1 draft".to_owned(),
                    n => format!(", {n} drafts"),
                }
            ));
        }
        for c in customers.iter().filter(|c| day(1, c.signup) == t) {
            let mut body = json!({
                "subscription_id": sub_id(c.id), "customer_id": c.id, "plan_code": c.plan,
                "billing_time": c.billing_time,
            });
            if let Some(a) = c.anchor_day {
                body["billing_anchor_day"] = json!(a);
            }
            if let Some(trial) = c.trial_ends_at {
                body["trial_ends_at"] = json!(trial);
            }
            api.write("/v1/subscriptions", body).await?;
            done.push(format!("{} subscribes to {}", c.id, c.plan));
            if let Some(code) = c.coupon {
                api.write(
                    "/v1/applied_coupons",
                    json!({"customer_id": c.id, "coupon_code": code}),
                )
                .await?;
                done.push(format!("coupon {code} applied to {}", c.id));
            }
        }
        for (_, c, act) in acts.iter().filter(|a| day(1, a.0) == t) {
            let sub = sub_id(c);
            let (path, body, what) = match act {
                Act::Change(plan) => (
                    format!("/v1/subscriptions/{sub}/change"),
                    json!({"plan_code": plan}),
                    format!("{c} moves to {plan}"),
                ),
                Act::Pause => (
                    format!("/v1/subscriptions/{sub}/pause"),
                    json!({}),
                    format!("{c} paused"),
                ),
                Act::Resume => (
                    format!("/v1/subscriptions/{sub}/resume"),
                    json!({}),
                    format!("{c} resumed"),
                ),
                Act::CancelAtPeriodEnd => (
                    format!("/v1/subscriptions/{sub}/cancel"),
                    json!({"at_period_end": true}),
                    format!("{c} cancels"),
                ),
            };
            let s = api.write(&path, body).await?;
            let at_period_end = s["changes"]
                .as_array()
                .and_then(|c| c.last())
                .is_some_and(|ch| ch["at_period_end"] == json!(true));
            done.push(if at_period_end {
                format!("{what} at period end")
            } else {
                what
            });
        }
        println!("  {}  {}", t.format("%Y-%m-%d"), done.join("; "));
    }
    anyhow::ensure!(usage.next().is_none(), "usage left after March 1");
    println!("  usage: {events} events, {calls} API calls in all");
    let payment_lines = payments_summary(&api, &receiver, &endpoint_id).await?;

    // The summary.
    let invoices = api.list("/v1/invoices").await?;
    let finalized: Vec<&Value> = invoices
        .iter()
        .filter(|i| i["status"] == "finalized")
        .collect();
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in &finalized {
        *totals
            .entry(i["currency"].as_str().unwrap_or("?").to_owned())
            .or_default() += amount(&i["total"]);
    }
    let totals: Vec<String> = totals.iter().map(|(c, t)| format!("{t} {c}")).collect();
    println!();
    println!(
        "{} invoices finalized ({} drafts) for {} customers in {:.0} s, totalling {}. A few of them:",
        finalized.len(),
        invoices.len() - finalized.len(),
        customers.len(),
        started.elapsed().as_secs_f64(),
        totals.join(", ")
    );
    println!(
        "  {:<20} {:<17} {:<11} {:>10} {:>10} {:<4} story",
        "number", "customer", "billed", "total", "due", ""
    );
    let mut example = None;
    for (who, when) in [
        ("cedar-labs", "2026-02-01"),
        ("juniper-retail", "2026-01-15"),
        ("lumen-energy", "2026-02-01"),
        ("meridian-ship", "2026-02-01"),
        ("nimbus-cloud", "2026-02-01"),
        ("quartz-studio", "2026-02-01"),
        ("fjord-media", "2026-03-01"),
        ("orchid-spa", "2026-02-01"),
        ("harbor-cafe", "2026-02-20"),
        ("pioneer-bikes", "2026-01-31"),
        ("tundra-tools", "2026-02-15"),
        ("vega-vat", "2026-01-31"),
        ("wren-promo", "2026-02-01"),
        ("yarrow-prepaid", "2026-02-01"),
        (LATE_CUSTOMER, "2026-03-01"),
    ] {
        let story = customers
            .iter()
            .find(|c| c.id == who)
            .map_or("", |c| c.story);
        let found = finalized.iter().find(|i| {
            i["customer_id"] == who
                && i["billing_date"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(when))
        });
        match found {
            Some(i) => {
                println!(
                    "  {:<20} {:<17} {:<11} {:>10} {:>10} {:<4} {story}",
                    i["number"].as_str().unwrap_or("-"),
                    who,
                    when,
                    amount(&i["total"]).to_string(),
                    amount(&i["amount_due"]).to_string(),
                    i["currency"].as_str().unwrap_or("?"),
                );
                if who == "lumen-energy" {
                    example = i["invoice_id"].as_str().map(str::to_owned);
                }
                let detail = match who {
                    "vega-vat" => i["applied_taxes"].as_array().map(|t| {
                        t.iter()
                            .map(|t| {
                                format!(
                                    "{} {} % on {}: {}",
                                    t["name"].as_str().unwrap_or("?"),
                                    t["rate"].as_str().unwrap_or("?"),
                                    amount(&t["taxable_amount"]),
                                    amount(&t["amount"])
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                    "wren-promo" => i["coupons"].as_array().map(|c| {
                        c.iter()
                            .map(|c| {
                                format!(
                                    "coupon {} -{} on a subtotal of {}",
                                    c["code"].as_str().unwrap_or("?"),
                                    amount(&c["amount"]),
                                    amount(&i["subtotal"])
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                    "yarrow-prepaid" => Some(format!(
                        "wallet credits used: {}",
                        amount(&i["credits_total"])
                    )),
                    LATE_CUSTOMER => i["lines"].as_array().map(|lines| {
                        lines
                            .iter()
                            .filter(|l| l["kind"] == "adjustment")
                            .map(|l| {
                                format!(
                                    "{}: {}",
                                    l["description"].as_str().unwrap_or("?"),
                                    amount(&l["amount"])
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                    _ => None,
                };
                if let Some(d) = detail.filter(|d| !d.is_empty()) {
                    println!("  {:<20} {:<17} {d}", "", "");
                }
            }
            None => println!(
                "  {:<20} {who:<17} {when:<11} {:>10} {:>10} {:<4} {story}",
                "(none)", "", "", ""
            ),
        }
    }
    if let Some(id) = &example {
        let inv = api.get(&format!("/v1/invoices/{id}")).await?;
        println!("  lines of {id} (lumen-energy, 2026-02-01):");
        for l in inv["lines"].as_array().into_iter().flatten() {
            println!(
                "    {:<18} {:>10}  {}",
                l["kind"].as_str().unwrap_or("?"),
                amount(&l["amount"]).to_string(),
                l["description"].as_str().unwrap_or("")
            );
        }
    }

    // MRR (docs/analytics.md): what the plans promise per month, and what moved it.
    let mrr = api.get("/v1/analytics/mrr?from=2026-01&to=2026-03").await?;
    println!();
    println!("MRR month by month (GET /v1/analytics/mrr, docs/analytics.md):");
    println!(
        "  {:<8} {:<4} {:>10} {:>9} {:>10} {:>12} {:>9} {:>10} {:>10}",
        "month",
        "",
        "starting",
        "new",
        "expansion",
        "contraction",
        "churned",
        "ending",
        "customers"
    );
    for r in mrr["data"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_str().unwrap_or("?").to_owned();
        println!(
            "  {:<8} {:<4} {:>10} {:>9} {:>10} {:>12} {:>9} {:>10} {:>10}",
            f("month"),
            f("currency"),
            f("starting_mrr"),
            f("new_mrr"),
            f("expansion_mrr"),
            f("contraction_mrr"),
            f("churned_mrr"),
            f("ending_mrr"),
            r["customers"]
        );
    }

    let h = format!("curl -s -H 'Authorization: Bearer {}'", api.key);
    let db = &settings.clickhouse.database;
    let example = example.unwrap_or_else(|| "INVOICE_ID".to_owned());
    let mut lines = payment_lines;
    lines.extend([
        format!("webhooks:     {h} '{base}/v1/webhook_endpoints/{endpoint_id}/deliveries?limit=5'"),
        format!("methods:      {h} {base}/v1/customers/alpine-bakery/payment_methods"),
    ]);
    lines.extend(vec![
        format!("invoices:     {h} '{base}/v1/invoices?status=finalized&limit=100'"),
        format!("one invoice:  {h} {base}/v1/invoices/{example}"),
        format!("a customer's: {h} {base}/v1/customers/lumen-energy/invoices"),
        format!("test clock:   {h} {base}/v1/test_clocks/{clock}"),
        format!("usage:        {h} '{base}/v1/customers/cedar-labs/usage?at=2026-02-15T00:00:00Z'"),
        format!("analytics:    {h} '{base}/v1/analytics/revenue?from=2026-01&to=2026-03'  (also mrr, usage, churn, collections)"),
        format!("MRR chart:    billing analytics mrr-chart --tenant {tenant} --currency EUR --from 2026-01 --to 2026-03 --out mrr.svg"),
        format!("reports:      clickhouse-client --database {db} < reports/mrr.sql  (every report of reports/, docs/analytics.md)"),
        format!(
            "invoices in ClickHouse: clickhouse-client --query \"SELECT number, customer_id, toDate(billing_date) AS billed, total, currency FROM {db}.invoices FINAL WHERE tenant_id = '{tenant}' ORDER BY number\""
        ),
        format!(
            "their lines:  clickhouse-client --query \"SELECT invoice_id, line_no, kind, description, amount FROM {db}.invoice_lines FINAL WHERE tenant_id = '{tenant}' AND customer_id = 'lumen-energy' ORDER BY billing_date, line_no\""
        ),
        format!(
            "invoice.finalized events: kcat -b {} -C -t {} -e -f '%k partition %p offset %o\\n' | grep {tenant}",
            settings.kafka.brokers, topics.invoices
        ),
    ]);
    Ok(lines)
}

/// The customer some of whose January usage arrives after its February 1 invoice, and how many calls.
const LATE_CUSTOMER: &str = "cedar-labs";
const LATE_CALLS: u64 = 25_000;

/// The late January usage: two events of half the calls, on January 28.
fn late_usage(tenant: &str) -> Vec<UsageEvent> {
    ["a", "b"]
        .iter()
        .map(|part| UsageEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("{LATE_CUSTOMER}-late-january-{part}"),
            customer_id: LATE_CUSTOMER.to_owned(),
            metric_code: "api_calls".into(),
            timestamp: Utc
                .with_ymd_and_hms(2026, 1, 28, 12, 0, 0)
                .single()
                .expect("valid date"),
            properties: BTreeMap::from([("value".to_owned(), (LATE_CALLS / 2).to_string())]),
        })
        .collect()
}

/// The customer whose card is always declined: dunning gives its first invoice up and cancels it.
const DECLINED: &str = "delta-dental";
/// The customer without a card: its first invoice is paid by bank transfer.
const BANK_TRANSFER: &str = "baltic-freight";

/// Record the bank transfer, then show where payments stand, the dunning story and the webhook log.
async fn payments_summary(
    api: &Api,
    receiver: &WebhookReceiver,
    endpoint_id: &str,
) -> anyhow::Result<Vec<String>> {
    let mine = |c: &str| format!("/v1/customers/{c}/invoices?status=finalized");
    let bank = api.list(&mine(BANK_TRANSFER)).await?;
    let first = bank
        .last()
        .and_then(|i| i["invoice_id"].as_str())
        .context("the bank-transfer customer has no invoice")?
        .to_owned();
    let paid = api
        .write(
            &format!("/v1/invoices/{first}/pay"),
            json!({"paid_out_of_band": true, "reference": "SEPA-TRANSFER-0001"}),
        )
        .await?;
    println!(
        "  {BANK_TRANSFER} pays {first} by bank transfer: payment {}",
        paid["payment_status"]
    );
    // Payments follow the invoices asynchronously: wait until every charged invoice has an outcome.
    let deadline = Instant::now() + Duration::from_secs(120);
    let invoices = loop {
        let all = api.list("/v1/invoices?status=finalized").await?;
        let waiting = all
            .iter()
            .filter(|i| {
                i["payment_status"] == "pending"
                    && i["customer_id"] != BANK_TRANSFER
                    && i["payment"]["next_payment_attempt"].is_null()
                    && i["payment"]["attempt_count"] == 0
            })
            .count();
        if waiting == 0 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for i in &invoices {
        *by_status
            .entry(i["payment_status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!();
    println!(
        "Payments on the sandbox provider: {} of {} finalized invoices",
        counts.join(", "),
        invoices.len()
    );
    let declined = api.list(&mine(DECLINED)).await?;
    if let Some(inv) = declined.last() {
        let id = inv["invoice_id"].as_str().unwrap_or_default();
        let attempts = api.get(&format!("/v1/invoices/{id}/payments")).await?;
        println!(
            "  dunning of {id} ({DECLINED}): payment {}, {} attempts:",
            inv["payment_status"],
            attempts["attempts"].as_array().map_or(0, Vec::len)
        );
        for a in attempts["attempts"].as_array().into_iter().flatten() {
            println!(
                "    #{} {}  {:<9} {}",
                a["attempt_number"],
                a["started_at"].as_str().unwrap_or("?"),
                a["status"].as_str().unwrap_or("?"),
                a["code"].as_str().unwrap_or("")
            );
        }
        let sub = api
            .get(&format!("/v1/subscriptions/{}", sub_id(DECLINED)))
            .await?;
        println!(
            "    then its subscription: {} (canceled at {})",
            sub["status"], sub["canceled_at"]
        );
    }
    refund_summary(api, &invoices).await?;
    let log = api
        .get(&format!(
            "/v1/webhook_endpoints/{endpoint_id}/deliveries?limit=5"
        ))
        .await?;
    println!(
        "Webhooks: {} signed requests received by {} so far; the delivery log's latest:",
        receiver.received(),
        receiver.url
    );
    for d in log["data"].as_array().into_iter().flatten() {
        println!(
            "  {:<30} {:<10} attempts {}",
            d["event_type"].as_str().unwrap_or("?"),
            d["status"].as_str().unwrap_or("?"),
            d["attempts"].as_array().map_or(0, Vec::len)
        );
    }
    let h = format!("curl -s -H 'Authorization: Bearer {}'", api.key);
    let declined_id = declined
        .last()
        .and_then(|i| i["invoice_id"].as_str())
        .unwrap_or("INVOICE_ID");
    Ok(vec![format!(
        "dunning:      {h} {}/v1/invoices/{declined_id}/payments",
        api.base
    )])
}

/// A credit note of type refund on the first invoice paid by card: 10 % of its first line back, through the sandbox.
async fn refund_summary(api: &Api, invoices: &[Value]) -> anyhow::Result<()> {
    let paid = invoices.iter().rev().find(|i| {
        i["payment_status"] == "paid"
            && i["customer_id"] != BANK_TRANSFER
            && i["payment"]["attempt_count"].as_i64().unwrap_or(0) > 0
            && i["lines"][0]["amount"]
                .as_str()
                .and_then(|a| a.parse::<rust_decimal::Decimal>().ok())
                .is_some_and(|a| a > rust_decimal::Decimal::ONE)
    });
    let Some(inv) = paid else {
        println!("  (no invoice paid by card with a positive first line to refund)");
        return Ok(());
    };
    let id = inv["invoice_id"].as_str().unwrap_or_default();
    let line: rust_decimal::Decimal = inv["lines"][0]["amount"].as_str().unwrap_or("0").parse()?;
    let amount = (line / rust_decimal::Decimal::TEN).round_dp(2);
    let cn = api
        .write(
            &format!("/v1/invoices/{id}/credit_notes"),
            json!({"type": "refund", "reason": "product_unsatisfactory", "memo": "Service outage",
                   "lines": [{"line_index": 0, "amount": amount.to_string()}]}),
        )
        .await?;
    let cn_id = cn["credit_note_id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refunded = loop {
        let c = api.get(&format!("/v1/credit_notes/{cn_id}")).await?;
        if c["refund"]["status"] != "pending" || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!(
        "  credit note {} on {} ({}): {} {} refunded, refund {} ({})",
        refunded["number"].as_str().unwrap_or("?"),
        inv["number"].as_str().unwrap_or(id),
        inv["customer_id"].as_str().unwrap_or("?"),
        refunded["total"].as_str().unwrap_or("?"),
        refunded["currency"].as_str().unwrap_or(""),
        refunded["refund"]["status"].as_str().unwrap_or("?"),
        refunded["refund"]["provider_reference"]
            .as_str()
            .unwrap_or("")
    );
    Ok(())
}

/// A webhook receiver on a loopback port: answers every request 200 and counts them.
struct WebhookReceiver {
    url: String,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookReceiver {
    async fn start() -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/webhooks", listener.local_addr()?);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    // One request per connection is enough: read the head and the body, answer 200, close.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())
                                        .flatten()
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Ok(WebhookReceiver { url, count })
    }

    fn received(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Wait until rating has checkpointed everything produced to `billing.usage` so far: its committed offsets (written
/// after the aggregates are durable) reach every partition's end. The invoicer waits for this too before a bill
/// run, but for a bounded time only.
async fn wait_rated(settings: &Settings, timeout: Duration) -> anyhow::Result<()> {
    let topic = Topics::new(&settings.kafka).usage;
    let brokers = settings.kafka.brokers.clone();
    let group = settings.rating.group_id.clone();
    let partitions = settings.kafka.partitions;
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let io = Duration::from_secs(10);
        let mut ends = BTreeMap::new();
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, io)?;
            if high > low {
                ends.insert(p, high);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut tpl = TopicPartitionList::new();
            for p in ends.keys() {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, io)?;
            let behind: Vec<String> = committed
                .elements()
                .iter()
                .filter_map(|e| {
                    let end = ends[&e.partition()];
                    match e.offset() {
                        Offset::Offset(at) if at >= end => None,
                        at => Some(format!("partition {} at {at:?} of {end}", e.partition())),
                    }
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "rating has not checkpointed every usage event after {timeout:?}: {}",
                behind.join(", ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The calls of a customer's events in `[from, to)`.
    fn calls(events: &[UsageEvent], from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
        events
            .iter()
            .filter(|e| from <= e.timestamp && e.timestamp < to)
            .map(|e| e.properties["value"].parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn usage_adds_up_to_the_daily_calls_so_invoices_can_be_checked_by_hand() {
        let customers = demo_customers();
        let mut ids = BTreeSet::new();
        for (i, c) in customers.iter().enumerate() {
            let events = usage_events("t", i, c);
            for e in &events {
                assert!(
                    ids.insert((e.customer_id.clone(), e.event_id.clone())),
                    "{}",
                    e.event_id
                );
                assert!(
                    e.timestamp > day(1, c.signup),
                    "{} before its sign-up",
                    e.event_id
                );
            }
            let daily = u64::from(c.calls_per_day);
            let jan_days = u64::from(32 - c.signup - c.quiet.map_or(0, |(a, b)| b - a + 1));
            assert_eq!(
                calls(&events, day(1, 1), day(2, 1)),
                daily * jan_days,
                "{}",
                c.id
            );
            let feb = calls(&events, day(2, 1), day(3, 1));
            if c.usage_until.0 == 2 {
                assert_eq!(feb, daily * 12 / 10 * 28, "{}", c.id);
            } else {
                assert_eq!(feb, 0, "{}", c.id);
            }
        }
        // lumen-energy: 6,000 calls a day; 14 days on starter (0.002) = 168.00, 17 on growth's tiers = 137.00.
        let lumen = customers
            .iter()
            .position(|c| c.id == "lumen-energy")
            .unwrap();
        let events = usage_events("t", lumen, &customers[lumen]);
        assert_eq!(calls(&events, day(1, 1), day(1, 15)), 84_000);
        assert_eq!(calls(&events, day(1, 15), day(2, 1)), 102_000);
    }

    #[test]
    fn every_act_names_a_customer_and_every_plan_exists() {
        let customers = demo_customers();
        let (_, plans) = demo_catalog();
        let codes: BTreeSet<&str> = plans.iter().map(|p| p["code"].as_str().unwrap()).collect();
        for c in &customers {
            assert!(codes.contains(c.plan), "{}", c.plan);
            let plan = plans.iter().find(|p| p["code"] == c.plan).unwrap();
            assert_eq!(plan["currency"], c.currency, "{}", c.id);
        }
        for who in [DECLINED, BANK_TRANSFER] {
            assert!(customers.iter().any(|c| c.id == who), "{who}");
        }
        for (_, who, act) in demo_acts() {
            assert!(customers.iter().any(|c| c.id == who), "{who}");
            if let Act::Change(p) = act {
                assert!(codes.contains(p), "{p}");
            }
        }
    }
}
