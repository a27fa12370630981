//! Crash test: a generated stream of 200,000 usage events over many customers and all six aggregations, with 5 %
//! duplicates and some invalid events, is rated by a `billing rating` process that is killed with SIGKILL three
//! times at random points and restarted. Afterwards every aggregate equals what this test computes on its own from
//! the generated events, to the last decimal, and ClickHouse holds each accepted event exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command};
use std::str::FromStr;
use std::time::Duration;

use billing_schemas::catalog::{Aggregation, ChargeModel};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{eventually, TestEnv};
use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use rust_decimal::Decimal;

const TENANT: &str = "crash";
const EVENTS: usize = 200_000;
const CUSTOMERS: usize = 400;
const METRICS: [(&str, Aggregation, Option<&str>); 6] = [
    ("m_count", Aggregation::Count, None),
    ("m_sum", Aggregation::Sum, Some("v")),
    ("m_max", Aggregation::Max, Some("v")),
    ("m_unique", Aggregation::UniqueCount, Some("user")),
    ("m_latest", Aggregation::Latest, Some("v")),
    ("m_weighted", Aggregation::WeightedSum, Some("v")),
];

/// (customer, charge, group).
type AggId = (String, String, String);

/// What the test expects of one (customer, charge, group) aggregate, computed without the product's code.
#[derive(Default)]
struct Expected {
    count: u64,
    sum: Decimal,
    max: Option<Decimal>,
    unique: BTreeSet<String>,
    latest: Option<(DateTime<Utc>, String, Decimal)>,
    weighted: Decimal,
}

fn spawn_rating(env: &TestEnv) -> Child {
    billing_tests::spawn_service(
        &env.settings,
        "rating",
        &[("BILLING__RATING__CHECKPOINT_EVENTS", "5000".into())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_rating_neither_loses_nor_double_counts() {
    let env = TestEnv::new("crash").await;
    for (code, agg, field) in METRICS {
        env.publish_metric(TENANT, code, agg, field, &[]).await;
    }
    let charges: Vec<(&str, &str, ChargeModel, &str, Option<&str>)> = METRICS
        .iter()
        .map(|(code, _, _)| {
            (
                *code,
                *code,
                ChargeModel::Standard,
                r#"{"amount":"0.5"}"#,
                Some("region"),
            )
        })
        .collect();
    env.publish_plan(TENANT, "all", "EUR", &charges).await;
    for c in 0..CUSTOMERS {
        env.subscribe(TENANT, &format!("c{c:04}"), "all", "2026-03-01T00:00:00Z")
            .await;
    }

    // Generate the stream and the expected aggregates.
    let mut rng = StdRng::seed_from_u64(0x5eed_b111);
    let month_start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let month_end = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    let mut expected: BTreeMap<AggId, Expected> = BTreeMap::new();
    let mut sent: Vec<(String, Vec<u8>)> = Vec::with_capacity(EVENTS);
    let mut accepted = 0u64;
    let (mut duplicates, mut invalid) = (0, 0);
    for i in 0..EVENTS {
        let roll = rng.random_range(0..1000);
        if roll < 55 && !sent.is_empty() {
            // A producer retry: the same bytes again.
            let j = rng.random_range(0..sent.len());
            let (key, payload) = sent[j].clone();
            sent.push((key, payload));
            duplicates += 1;
            continue;
        }
        let customer = format!("c{:04}", rng.random_range(0..CUSTOMERS));
        if roll < 60 {
            // Invalid: an unknown metric, or a negative sum.
            let (metric, v) = if roll % 2 == 0 {
                ("m_nope", "1")
            } else {
                ("m_sum", "-1")
            };
            let ev = UsageEvent {
                tenant_id: TENANT.into(),
                event_id: format!("bad-{i}"),
                customer_id: customer.clone(),
                metric_code: metric.into(),
                timestamp: month_start + chrono::Duration::seconds(rng.random_range(0..2_678_400)),
                properties: BTreeMap::from([("v".to_owned(), v.to_owned())]),
            };
            sent.push((
                customer_key(TENANT, &customer),
                encode(&ev, Encoding::Json).unwrap(),
            ));
            invalid += 1;
            continue;
        }
        let (metric, _, _) = METRICS[rng.random_range(0..METRICS.len())];
        let region = ["eu", "us", "ap"][rng.random_range(0..3)];
        let v = Decimal::new(rng.random_range(0..100_000), rng.random_range(0..4));
        let user = format!("u{}", rng.random_range(0..50));
        let ts = month_start + chrono::Duration::seconds(rng.random_range(0..2_678_400));
        let ev = UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("ev-{i}"),
            customer_id: customer.clone(),
            metric_code: metric.into(),
            timestamp: ts,
            properties: BTreeMap::from([
                ("region".to_owned(), region.to_owned()),
                ("user".to_owned(), user.clone()),
                ("v".to_owned(), v.to_string()),
            ]),
        };
        let e = expected
            .entry((customer.clone(), metric.to_owned(), region.to_owned()))
            .or_default();
        e.count += 1;
        e.sum += v;
        e.max = Some(e.max.map_or(v, |m| m.max(v)));
        e.unique.insert(user);
        if e.latest
            .as_ref()
            .is_none_or(|(t, id, _)| (ts, ev.event_id.as_str()) > (*t, id.as_str()))
        {
            e.latest = Some((ts, ev.event_id.clone(), v));
        }
        e.weighted += v * Decimal::from((month_end - ts).num_seconds());
        accepted += 1;
        let encoding = if i % 2 == 0 {
            Encoding::Avro
        } else {
            Encoding::Json
        };
        sent.push((
            customer_key(TENANT, &customer),
            encode(&ev, encoding).unwrap(),
        ));
    }
    assert_eq!(sent.len(), EVENTS);
    assert!(
        duplicates * 100 >= EVENTS * 5 && invalid > 0,
        "{duplicates} duplicates, {invalid} invalid"
    );

    let producer = env.producer();
    for chunk in sent.chunks(20_000) {
        let deliveries: Vec<_> = chunk
            .iter()
            .map(|(key, payload)| {
                producer
                    .send_result(
                        FutureRecord::to(&env.topics.usage)
                            .key(key)
                            .payload(payload),
                    )
                    .ok()
                    .unwrap()
            })
            .collect();
        for d in deliveries {
            d.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }

    // Three SIGKILLs at random points while rating is making progress, then a run to the end.
    for kill in 0..3 {
        let before = billing_tests::rating_lag(&env).await;
        let mut child = spawn_rating(&env);
        // Wait until this instance has committed a checkpoint, so the kill lands mid-stream, not during start-up.
        eventually(
            Duration::from_secs(120),
            "progress before the kill",
            || async { (billing_tests::rating_lag(&env).await < before).then_some(()) },
        )
        .await;
        let after = Duration::from_millis(rng.random_range(0..1_500));
        tokio::time::sleep(after).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let left = billing_tests::rating_lag(&env).await;
        eprintln!(
            "kill {}: {after:?} after a checkpoint; lag {before} -> {left}",
            kill + 1
        );
        assert!(left > 0, "the kill must land before the end of the stream");
    }
    let mut child = spawn_rating(&env);
    billing_tests::rating_caught_up(&env, Duration::from_secs(600)).await;
    nix_term(&mut child);

    // Every aggregate, from the store through the API's pricing path.
    let stop = billing_runtime::Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut api_settings = env.settings.clone();
    api_settings.rate_limits.reads = billing_runtime::config::Rate {
        per_second: 100_000,
        burst: 100_000,
    };
    let key =
        billing_tests::api_key(&env.settings, TENANT, billing_runtime::auth::Role::Read).await;
    let api_task = tokio::spawn(billing_query_api::run(
        api_settings,
        stop.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let api = format!("http://{}", rx.await.unwrap());
    let mut by_customer: HashMap<String, Vec<(&AggId, &Expected)>> = HashMap::new();
    for (k, e) in &expected {
        by_customer.entry(k.0.clone()).or_default().push((k, e));
    }
    let seconds = Decimal::from((month_end - month_start).num_seconds());
    let mut checked = 0;
    for (customer, rows) in &by_customer {
        let body = billing_tests::api_usage_body(&api, &key, customer, "2026-03-15T00:00:00Z")
            .await
            .unwrap();
        let charges = body["charges"].as_array().unwrap();
        assert_eq!(
            charges.len(),
            rows.len(),
            "{customer}: one aggregate per charge and region"
        );
        for ((_, metric, region), e) in rows {
            let got = charges
                .iter()
                .find(|c| c["charge_id"] == metric.as_str() && c["group"] == region.as_str())
                .unwrap();
            let units = Decimal::from_str(got["units"].as_str().unwrap()).unwrap();
            let want = match metric.as_str() {
                "m_count" => Decimal::from(e.count),
                "m_sum" => e.sum,
                "m_max" => e.max.unwrap(),
                "m_unique" => Decimal::from(e.unique.len()),
                "m_latest" => e.latest.as_ref().unwrap().2,
                _ => e.weighted / seconds,
            };
            assert_eq!(units, want, "{customer}/{metric}/{region}");
            // The amount: 0.50 EUR per unit, rounded half-up to the cent once.
            let mut amount = (want * Decimal::new(5, 1))
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            amount.rescale(2);
            assert_eq!(
                got["amount"].as_str().unwrap(),
                amount.to_string(),
                "{customer}/{metric}/{region} amount"
            );
            assert_eq!(
                got["events_count"].as_u64().unwrap(),
                e.count,
                "{customer}/{metric}/{region} events"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len());
    stop.cancel();
    api_task.await.unwrap().unwrap();

    // ClickHouse: each accepted event once. Without FINAL, a row written by a checkpoint that a SIGKILL cut before
    // its offsets were committed is there twice until a merge: the replay writes the same row again (same key,
    // same values), and `ReplacingMergeTree(tenant, customer, event id)` keeps one; reports read with FINAL.
    let counts = env.usage_event_counts(TENANT, true).await.unwrap();
    assert_eq!((counts.rows, counts.distinct), (accepted, accepted));
    let raw = env.usage_event_counts(TENANT, false).await.unwrap();
    assert_eq!(
        raw.distinct, accepted,
        "no event missing or foreign without FINAL"
    );
    assert!(raw.rows >= accepted);
    eprintln!(
        "ClickHouse without FINAL: {} rows for {accepted} events ({} replayed copies, collapsed by FINAL)",
        raw.rows,
        raw.rows - accepted
    );
    env.cleanup().await;
}

fn nix_term(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
