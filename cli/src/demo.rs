//! `billing demo`: the pipeline with a small workload. It migrates, starts rating and the query API in this
//! process, produces usage for a few customers (plus a few malformed messages), waits until the API shows every
//! event, and prints where to look.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::publish::Publisher;
use billing_runtime::{Settings, Shutdown};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use chrono::{TimeZone, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rust_decimal::Decimal;

/// Demo options.
#[derive(clap::Args)]
pub struct Args {
    /// Tenant the demo data belongs to.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Customers to generate usage for.
    #[arg(long, default_value_t = 5)]
    customers: u32,
    /// Usage events per customer.
    #[arg(long, default_value_t = 200)]
    events_per_customer: u32,
    /// Stop once the workload is visible instead of serving until Ctrl-C.
    #[arg(long)]
    exit_when_done: bool,
}

pub async fn run(settings: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let report = billing_store::migrate::run(&settings)
        .await
        .context("migration failed")?;
    println!("migrated: {report}");

    let rating = tokio::spawn(billing_rating::run(settings.clone(), stop.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(billing_query_api::run(
        settings.clone(),
        stop.clone(),
        move |addr| {
            let _ = tx.send(addr);
        },
    ));
    let api_addr = rx.await.context("query-api did not start")?;

    let topics = Topics::new(&settings.kafka);
    let producer = kafka::producer(&settings.kafka)?;
    publish_reference(&Publisher::new(&settings.kafka)?, &args).await?;
    let mut before = BTreeMap::new();
    for c in 0..args.customers {
        let customer = format!("customer-{c:03}");
        let seen =
            usage_of(&api_addr.to_string(), &args.tenant, &customer).await["events_count"].as_u64();
        before.insert(customer, seen.unwrap_or(0));
    }
    // Event times fall in one fixed month so that re-running the demo adds to the same totals visibly.
    let base = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut expected: BTreeMap<String, (u64, Decimal)> = BTreeMap::new();
    for c in 0..args.customers {
        let customer_id = format!("customer-{c:03}");
        for i in 0..args.events_per_customer {
            let value = Decimal::new(i64::from(i % 10) * 25 + 5, 2); // 0.05 … 2.30
            let ev = UsageEvent {
                tenant_id: args.tenant.clone(),
                event_id: format!("{run_id}-{c}-{i}"),
                customer_id: customer_id.clone(),
                metric_code: "api_calls".into(),
                timestamp: base + chrono::Duration::seconds(i64::from(i) * 60),
                properties: BTreeMap::from([("value".to_owned(), value.to_string())]),
            };
            // Alternate encodings, as real producers would.
            let encoding = if i % 2 == 0 {
                Encoding::Avro
            } else {
                Encoding::Json
            };
            let payload = encode(&ev, encoding)?;
            let key = customer_key(&ev.tenant_id, &ev.customer_id);
            let headers = OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(encoding.content_type()),
            });
            producer
                .send(
                    FutureRecord::to(&topics.usage)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
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
    let total: u64 = expected.values().map(|v| v.0).sum();
    println!(
        "produced {total} usage events for {} customers, and 3 malformed messages",
        args.customers
    );

    let url = format!("http://{api_addr}/v1/customers/customer-000/usage?at=2026-11-15T00:00:00Z");
    wait_until_visible(&api_addr.to_string(), &args.tenant, &expected, &before).await?;
    println!();
    println!("The demo workload is rated. Where to look:");
    println!(
        "  usage API:   curl -s -H 'x-tenant-id: {}' '{url}'",
        args.tenant
    );
    println!(
        "  ClickHouse:  clickhouse-client --query \"SELECT customer_id, count(), sum(value) FROM {}.usage_events FINAL WHERE tenant_id = '{}' GROUP BY customer_id ORDER BY customer_id\"",
        settings.clickhouse.database, args.tenant
    );
    println!(
        "  dead letters: kcat -b {} -C -t {} -e -f '%h %s\\n'",
        settings.kafka.brokers, topics.usage_dlq
    );
    println!(
        "  rating health/metrics: http://{}/ready  http://{}/metrics",
        settings.rating.listen, settings.rating.listen
    );
    if args.exit_when_done {
        stop.cancel();
    } else {
        println!("Serving until Ctrl-C.");
    }
    api.await??;
    rating.await??;
    Ok(())
}

/// Poll the API until each customer's event count reaches at least what this run produced.
async fn wait_until_visible(
    api: &str,
    tenant: &str,
    expected: &BTreeMap<String, (u64, Decimal)>,
    before: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for customer in expected.keys() {
        // Earlier demo runs add to the same period: wait for this run's events on top of what was there.
        let want = before.get(customer).copied().unwrap_or(0) + expected[customer].0;
        loop {
            let charge = usage_of(api, tenant, customer).await;
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

/// The demo charge's usage of a customer in November 2026, as the API serves it (null when absent).
async fn usage_of(api: &str, tenant: &str, customer: &str) -> serde_json::Value {
    let path = format!("/v1/customers/{customer}/usage?at=2026-11-15T00:00:00Z");
    let body = http_get(api, &path, tenant).await.unwrap_or_default();
    let doc = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
    doc["charges"][0].clone()
}

/// A minimal HTTP/1.1 GET, to keep an HTTP client out of the binary.
async fn http_get(addr: &str, path: &str, tenant: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-tenant-id: {tenant}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(body.to_owned())
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
