//! Usage end to end on the real servers: events produced to Kafka are attributed to subscriptions and charges,
//! aggregated exactly into ScyllaDB, recorded in ClickHouse and served, priced, by the API; bad messages are
//! dead-lettered with a reason and do not stop consumption; replays and duplicates count nothing twice.

use std::str::FromStr;
use std::time::Duration;

use billing_runtime::kafka::dlq_headers;
use billing_schemas::catalog::{Aggregation, ChargeModel};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{api_usage, eventually, Services, TestEnv};
use chrono::{TimeZone, Utc};
use rdkafka::message::{Headers, Message};
use rust_decimal::Decimal;

const WAIT: Duration = Duration::from_secs(60);
const AT: &str = "2026-03-20T00:00:00Z";
const TENANT: &str = "acme";

fn event(customer: &str, id: &str, metric: &str, props: &[(&str, &str)]) -> UsageEvent {
    UsageEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        customer_id: customer.into(),
        metric_code: metric.into(),
        timestamp: Utc.with_ymd_and_hms(2026, 3, 14, 15, 9, 26).unwrap(),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

async fn produce_event(env: &TestEnv, ev: &UsageEvent, encoding: Encoding) -> (i32, i64) {
    let payload = encode(ev, encoding).unwrap();
    env.produce(
        &env.topics.usage,
        &customer_key(&ev.tenant_id, &ev.customer_id),
        &payload,
        Some(encoding.content_type()),
    )
    .await
}

/// Produce one message with kcat (as a producer outside the project would), with `args` after the brokers.
fn kcat_produce(env: &TestEnv, args: &[&str], payload: &[u8]) {
    use std::io::Write;
    let mut child = std::process::Command::new("kcat")
        .args(["-P", "-b", &env.settings.kafka.brokers])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed by deploy/local/stack install");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success(), "kcat failed");
}

/// The text of a header of a consumed message.
fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A metric `api_calls` (sum of `value`) charged 0.01 per unit on plan `basic`, and customers subscribed.
async fn basic_catalog(env: &TestEnv, customers: &[&str]) {
    env.publish_basic_catalog(TENANT, customers).await;
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ChTotal {
    customer_id: String,
    events: u64,
    value: i128,
}

async fn clickhouse_totals(env: &TestEnv) -> Vec<(String, u64, Decimal)> {
    env.clickhouse()
        .query(
            "SELECT customer_id, count() AS events, sum(value) AS value FROM usage_events FINAL \
             WHERE tenant_id = ? GROUP BY customer_id ORDER BY customer_id",
        )
        .bind(TENANT)
        .fetch_all::<ChTotal>()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.customer_id, r.events, from_decimal_38_9(r.value)))
        .collect()
}

/// A ClickHouse `Decimal(38, 9)` (the value × 10^9) as a `Decimal`: trailing zeros dropped first, so values up to
/// what a `Decimal` holds convert (a mantissa at scale 9 holds only up to ≈ 7.9e19).
fn from_decimal_38_9(mut v: i128) -> Decimal {
    let mut scale = 9;
    while scale > 0 && v % 10 == 0 {
        v /= 10;
        scale -= 1;
    }
    Decimal::from_i128_with_scale(v, scale).normalize()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_rust_reaches_scylla_clickhouse_and_the_api_exactly() {
    let env = TestEnv::new("slice").await;
    let customers = ["cus-0", "cus-1", "cus-2", "cus-3"];
    basic_catalog(&env, &["cus-0", "cus-1", "cus-2", "cus-3", "cus-big"]).await;
    let services = Services::start(&env.settings).await;
    // Values with many decimals prove that nothing rounds through floats.
    let values = ["0.1", "0.2", "1.000000001", "2.5", "0.3"];
    for customer in customers {
        for (i, v) in values.iter().enumerate() {
            let encoding = if i % 2 == 0 {
                Encoding::Avro
            } else {
                Encoding::Json
            };
            produce_event(
                &env,
                &event(
                    customer,
                    &format!("{customer}-{i}"),
                    "api_calls",
                    &[("value", v)],
                ),
                encoding,
            )
            .await;
        }
    }
    // A value above what a Decimal holds at 9 decimals (≈ 7.9e19) reaches ClickHouse's Decimal(38, 9) exactly.
    let big = "100000000000000000000";
    produce_event(
        &env,
        &event("cus-big", "big-0", "api_calls", &[("value", big)]),
        Encoding::Json,
    )
    .await;
    let (units, _, amount) = eventually(WAIT, "the big value in the API", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-big",
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 == 1)
    })
    .await;
    assert_eq!(
        (units.as_str(), amount.as_str()),
        (big, "1000000000000000000.00")
    );
    for customer in customers {
        let (units, events, amount) = eventually(WAIT, "usage in the API", || async {
            api_usage(
                &services.api,
                &services.key(TENANT).await,
                customer,
                "calls",
                AT,
            )
            .await
            .filter(|u| u.1 == 5)
        })
        .await;
        assert_eq!(
            (units.as_str(), events, amount.as_str()),
            ("4.100000001", 5, "0.04"),
            "{customer}"
        );
    }
    let ch = clickhouse_totals(&env).await;
    let mut want: Vec<(String, u64, Decimal)> = customers
        .iter()
        .map(|c| (c.to_string(), 5, Decimal::from_str("4.100000001").unwrap()))
        .collect();
    want.push(("cus-big".into(), 1, Decimal::from_str(big).unwrap()));
    assert_eq!(ch, want);

    // Another tenant sees nothing of acme's usage; another period shows nothing.
    let other =
        billing_tests::api_usage_body(&services.api, &services.key("globex").await, "cus-0", AT)
            .await
            .unwrap();
    assert_eq!(other["charges"], serde_json::json!([]));
    assert_eq!(
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-0",
            "calls",
            "2026-04-02T00:00:00Z"
        )
        .await,
        None
    );
    services.shutdown().await;
    env.cleanup().await;
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ChPriced {
    customer_id: String,
    unpriced: u8,
    amount: i128,
}

/// A charge that running usage cannot price (a percentage with per-transaction bounds) is never a silent 0 in
/// ClickHouse: the row says its amount leaves that charge out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_amount_leaves_a_charge_out_says_so() {
    let env = TestEnv::new("unpriced").await;
    basic_catalog(&env, &["cus-s"]).await;
    env.publish_plan(
        TENANT,
        "fees",
        "EUR",
        &[
            (
                "std",
                "api_calls",
                ChargeModel::Standard,
                r#"{"amount":"0.5"}"#,
                None,
            ),
            (
                "fee",
                "api_calls",
                ChargeModel::Percentage,
                r#"{"rate":"1","per_transaction_max_amount":"0.02"}"#,
                None,
            ),
        ],
    )
    .await;
    env.subscribe(TENANT, "cus-f", "fees", "2026-03-01T00:00:00Z")
        .await;
    for customer in ["cus-f", "cus-s"] {
        let ev = event(
            customer,
            &format!("{customer}-1"),
            "api_calls",
            &[("value", "4")],
        );
        produce_event(&env, &ev, Encoding::Json).await;
    }
    let services = Services::start(&env.settings).await;
    let rows = eventually(WAIT, "both rows in ClickHouse", || async {
        let rows = env
            .clickhouse()
            .query(
                "SELECT customer_id, unpriced, amount FROM usage_events FINAL WHERE tenant_id = ? \
                 ORDER BY customer_id",
            )
            .bind(TENANT)
            .fetch_all::<ChPriced>()
            .await
            .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let got: Vec<(String, u8, Decimal)> = rows
        .into_iter()
        .map(|r| (r.customer_id, r.unpriced, from_decimal_38_9(r.amount)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cus-f".to_owned(), 1, Decimal::from(2)),
            ("cus-s".to_owned(), 0, Decimal::from_str("0.04").unwrap()),
        ],
        "(customer, unpriced, amount): the percentage charge is left out of cus-f's amount, and flagged"
    );
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_produced_by_kcat_is_rated() {
    let env = TestEnv::new("kcat").await;
    basic_catalog(&env, &["cus-k"]).await;
    let services = Services::start(&env.settings).await;
    let json = r#"{"tenant_id":"acme","event_id":"kcat-1","customer_id":"cus-k","metric_code":"api_calls","timestamp":"2026-03-14T15:09:26Z","properties":{"value":7.25}}"#;
    kcat_produce(
        &env,
        &[
            "-X",
            "partitioner=murmur2_random",
            "-t",
            &env.topics.usage,
            "-k",
            "acme/cus-k",
            "-H",
            "content-type=application/json",
        ],
        json.as_bytes(),
    );
    let usage = eventually(WAIT, "kcat event in the API", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-k",
            "calls",
            AT,
        )
        .await
    })
    .await;
    assert_eq!(usage, ("7.25".to_owned(), 1, "0.07".to_owned()));
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_dead_lettered_and_consumption_continues() {
    let mut env = TestEnv::new("dlq").await;
    env.settings.rating.max_event_bytes = 1024;
    env.settings.rating.max_unique_values = 2;
    basic_catalog(&env, &["cus-d"]).await;
    env.publish_metric(TENANT, "peak_gb", Aggregation::Max, Some("gb"), &[])
        .await;
    // A unique count of users, and a customer whose aggregate already holds the two values it may count.
    env.publish_metric(TENANT, "users", Aggregation::UniqueCount, Some("user"), &[])
        .await;
    let users = (
        "users",
        "users",
        ChargeModel::Standard,
        r#"{"amount":"1"}"#,
        None,
    );
    env.publish_plan(TENANT, "per_user", "EUR", &[users]).await;
    env.subscribe(TENANT, "cus-u", "per_user", "2026-03-01T00:00:00Z")
        .await;
    for (id, user) in [("u1", "ann"), ("u2", "bob"), ("u3", "ann")] {
        produce_event(
            &env,
            &event("cus-u", id, "users", &[("user", user)]),
            Encoding::Json,
        )
        .await;
    }
    let key = customer_key(TENANT, "cus-d");
    let good = event("cus-d", "good-1", "api_calls", &[("value", "1")]);
    let mut wrong_schema = encode(&good, Encoding::Avro).unwrap();
    wrong_schema[4] = 42;
    let random: Vec<u8> = std::iter::once(0xff)
        .chain((1..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
        .collect();
    let json = |ev: &UsageEvent| encode(ev, Encoding::Json).unwrap();
    let mut future = event("cus-d", "future", "api_calls", &[("value", "1")]);
    future.timestamp = Utc::now() + chrono::Duration::days(3);
    let mut early = event("cus-d", "early", "api_calls", &[("value", "1")]);
    early.timestamp = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let big = "x".repeat(2000);

    produce_event(&env, &good, Encoding::Avro).await;
    let cases: Vec<(Vec<u8>, &str, Option<&str>, &str)> = vec![
        (
            random.clone(),
            key.as_str(),
            None,
            "undecodable: invalid JSON value",
        ),
        (
            wrong_schema,
            key.as_str(),
            Some("application/vnd.confluent.avro"),
            "schema id 42 is not accepted here",
        ),
        (
            br#"{"tenant_id":"acme","event_id":"x","metric_code":"api_calls","timestamp":1}"#
                .to_vec(),
            key.as_str(),
            None,
            "missing field `customer_id`",
        ),
        (
            json(&good),
            "acme/someone-else",
            None,
            "message key \"acme/someone-else\" must be \"acme/cus-d\"",
        ),
        (
            json(&event("cus-d", "m1", "no_such_metric", &[])),
            key.as_str(),
            None,
            "unknown metric \"no_such_metric\"",
        ),
        (
            json(&event("cus-x", "c1", "api_calls", &[("value", "1")])),
            "acme/cus-x",
            None,
            "unknown customer \"cus-x\"",
        ),
        (
            json(&early),
            key.as_str(),
            None,
            "no active subscription for customer \"cus-d\"",
        ),
        (
            json(&future),
            key.as_str(),
            None,
            "after the event was received",
        ),
        (
            json(&event("cus-d", "p1", "api_calls", &[])),
            key.as_str(),
            None,
            "property \"value\" is missing",
        ),
        (
            json(&event("cus-d", "p2", "api_calls", &[("value", "lots")])),
            key.as_str(),
            None,
            "\"lots\" is not a plain decimal number",
        ),
        (
            json(&event("cus-d", "p4", "api_calls", &[("value", "1_000")])),
            key.as_str(),
            None,
            "\"1_000\" is not a plain decimal number",
        ),
        (
            json(&event(
                "cus-d",
                "p5",
                "api_calls",
                &[("value", "1.1234567891")],
            )),
            key.as_str(),
            None,
            "\"1.1234567891\" is not a plain decimal number",
        ),
        (
            json(&event("cus-d", "p3", "peak_gb", &[("gb", "-4")])),
            key.as_str(),
            None,
            "must not be negative for max metrics",
        ),
        (
            json(&event("cus-u", "u4", "users", &[("user", "cyd")])),
            "acme/cus-u",
            None,
            "unique_count_limit: charge \"users\" already counts 2 distinct values",
        ),
        (
            json(&event(
                "cus-d",
                "big",
                "api_calls",
                &[("value", "1"), ("note", &big)],
            )),
            key.as_str(),
            None,
            "exceeds the limit of 1024",
        ),
    ];
    let mut bad = Vec::new();
    for (payload, k, ct, reason) in cases {
        let (partition, offset) = env.produce(&env.topics.usage, k, &payload, ct).await;
        bad.push((payload, k.to_owned(), reason, partition, offset));
    }
    produce_event(
        &env,
        &event("cus-d", "good-2", "api_calls", &[("value", "2")]),
        Encoding::Json,
    )
    .await;

    // Start rating only after everything is in the topic: it must get through the garbage to good-2.
    let services = Services::start(&env.settings).await;
    eventually(WAIT, "both good events counted", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-d",
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 == 2 && u.0 == "3")
    })
    .await;

    let dead = env.read_topic(&env.topics.usage_dlq, bad.len(), WAIT).await;
    assert_eq!(
        dead.len(),
        bad.len(),
        "every bad message is dead-lettered once"
    );
    for (payload, k, reason, partition, offset) in &bad {
        let m = dead
            .iter()
            .find(|m| m.payload() == Some(payload.as_slice()) && m.key() == Some(k.as_bytes()))
            .unwrap_or_else(|| panic!("raw bytes kept for {reason}"));
        let header = |name: &str| {
            let h = m.headers().unwrap();
            let v = h
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .unwrap_or_default();
            String::from_utf8(v.to_vec()).unwrap()
        };
        assert!(
            header(dlq_headers::REASON).contains(reason),
            "{} lacks {reason}",
            header(dlq_headers::REASON)
        );
        assert_eq!(header(dlq_headers::SOURCE_TOPIC), env.topics.usage);
        assert_eq!(header(dlq_headers::SOURCE_PARTITION), partition.to_string());
        assert_eq!(header(dlq_headers::SOURCE_OFFSET), offset.to_string());
    }
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregation_matches_an_independent_computation() {
    let env = TestEnv::new("aggs").await;
    for (code, agg, field) in [
        ("c_count", Aggregation::Count, None),
        ("c_sum", Aggregation::Sum, Some("v")),
        ("c_max", Aggregation::Max, Some("v")),
        ("c_unique", Aggregation::UniqueCount, Some("user")),
        ("c_latest", Aggregation::Latest, Some("v")),
        ("c_weighted", Aggregation::WeightedSum, Some("v")),
    ] {
        env.publish_metric(TENANT, code, agg, field, &[("region", &["eu", "us"])])
            .await;
    }
    let charges: Vec<(&str, &str, ChargeModel, &str, Option<&str>)> = [
        "c_count",
        "c_sum",
        "c_max",
        "c_unique",
        "c_latest",
        "c_weighted",
    ]
    .iter()
    .map(|m| {
        (
            *m,
            *m,
            ChargeModel::Standard,
            r#"{"amount":"1"}"#,
            Some("region"),
        )
    })
    .collect();
    env.publish_plan(TENANT, "all", "EUR", &charges).await;
    env.subscribe(TENANT, "cus-a", "all", "2026-03-01T00:00:00Z")
        .await;
    let services = Services::start(&env.settings).await;

    // Events in March (31 days = 2,678,400 s); "ap" is filtered out by the metric filter.
    let rows = [
        ("e1", 1, "eu", "u1", "10"),
        ("e2", 5, "eu", "u2", "2.5"),
        ("e3", 5, "us", "u1", "7"),
        ("e4", 9, "eu", "u1", "4"),
        ("e5", 2, "ap", "u9", "100"),
    ];
    let mut n = 0;
    for metric in [
        "c_count",
        "c_sum",
        "c_max",
        "c_unique",
        "c_latest",
        "c_weighted",
    ] {
        // Reverse order: results must not depend on arrival order.
        for (id, day, region, user, v) in rows.iter().rev() {
            let mut ev = event(
                "cus-a",
                &format!("{metric}-{id}"),
                metric,
                &[("region", region), ("user", user), ("v", v)],
            );
            ev.timestamp = Utc.with_ymd_and_hms(2026, 3, *day, 0, 0, 0).unwrap();
            produce_event(&env, &ev, Encoding::Json).await;
            n += 1;
        }
    }
    assert_eq!(n, 30);
    let month = Decimal::from(31 * 86_400);
    // Independent expectations, group eu then us:
    // An increment on day d holds from d 00:00 to April 1: 32 - d days.
    let weighted_eu = (Decimal::from(10) * Decimal::from(31 * 86_400)
        + Decimal::from_str("2.5").unwrap() * Decimal::from(27 * 86_400)
        + Decimal::from(4) * Decimal::from(23 * 86_400))
        / month;
    let weighted_us = Decimal::from(7) * Decimal::from(27 * 86_400) / month;
    let expected = [
        ("c_count", "eu", Decimal::from(3)),
        ("c_count", "us", Decimal::from(1)),
        ("c_sum", "eu", Decimal::from_str("16.5").unwrap()),
        ("c_sum", "us", Decimal::from(7)),
        ("c_max", "eu", Decimal::from(10)),
        ("c_unique", "eu", Decimal::from(2)),
        ("c_unique", "us", Decimal::from(1)),
        ("c_latest", "eu", Decimal::from(4)),
        ("c_latest", "us", Decimal::from(7)),
        ("c_weighted", "eu", weighted_eu),
        ("c_weighted", "us", weighted_us),
    ];
    let body = eventually(WAIT, "all aggregates", || async {
        let body =
            billing_tests::api_usage_body(&services.api, &services.key(TENANT).await, "cus-a", AT)
                .await?;
        let events: u64 = body["charges"]
            .as_array()?
            .iter()
            .map(|c| c["events_count"].as_u64().unwrap_or(0))
            .sum();
        (events == 24).then_some(body)
    })
    .await;
    let charges = body["charges"].as_array().unwrap();
    for (charge, group, units) in expected {
        let row = charges
            .iter()
            .find(|c| c["charge_id"] == charge && c["group"] == group)
            .unwrap_or_else(|| panic!("{charge}/{group} missing in {body}"));
        assert_eq!(
            Decimal::from_str(row["units"].as_str().unwrap()).unwrap(),
            units,
            "{charge}/{group}"
        );
    }
    services.shutdown().await;
    env.cleanup().await;
}

/// Ids counted before dedup blocks existed are in the legacy one-row-per-id table until their TTL: rating reads
/// it while it holds a row (and skips it once it is empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_the_legacy_dedup_table_are_still_duplicates() {
    let env = TestEnv::new("legacy_dedup").await;
    basic_catalog(&env, &["cus-l"]).await;
    let session = billing_runtime::cql::connect(&env.settings.cassandra)
        .await
        .unwrap();
    session
        .query_unpaged(
            format!(
                "INSERT INTO {}.usage_dedup (tenant_id, customer_id, event_id) VALUES (?, ?, ?)",
                env.settings.cassandra.keyspace
            ),
            (TENANT, "cus-l", "old-1"),
        )
        .await
        .unwrap();
    for id in ["old-1", "new-1", "new-2"] {
        produce_event(
            &env,
            &event("cus-l", id, "api_calls", &[("value", "1")]),
            Encoding::Json,
        )
        .await;
    }
    let services = Services::start(&env.settings).await;
    let key = services.key(TENANT).await;
    eventually(WAIT, "the new events counted", || async {
        api_usage(&services.api, &key, "cus-l", "calls", AT)
            .await
            .filter(|u| u.1 >= 2)
    })
    .await;
    billing_tests::rating_caught_up(&env, WAIT).await;
    let usage = api_usage(&services.api, &key, "cus-l", "calls", AT).await;
    assert_eq!(
        usage.map(|u| u.1),
        Some(2),
        "old-1 was counted before and is a duplicate"
    );
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_duplicates_and_restarts_count_nothing_twice() {
    let env = TestEnv::new("replay").await;
    let customers: Vec<String> = (0..5).map(|c| format!("cus-{c}")).collect();
    let refs: Vec<&str> = customers.iter().map(String::as_str).collect();
    basic_catalog(&env, &refs).await;
    for i in 0..50 {
        let customer = format!("cus-{}", i % 5);
        produce_event(
            &env,
            &event(
                &customer,
                &format!("e{i}"),
                "api_calls",
                &[("value", "0.01")],
            ),
            Encoding::Avro,
        )
        .await;
    }
    // Ten producer retries of already-sent events.
    for i in 0..10 {
        let customer = format!("cus-{}", i % 5);
        produce_event(
            &env,
            &event(
                &customer,
                &format!("e{i}"),
                "api_calls",
                &[("value", "0.01")],
            ),
            Encoding::Json,
        )
        .await;
    }
    let services = Services::start(&env.settings).await;
    for c in &customers {
        eventually(WAIT, "first pass", || async {
            api_usage(&services.api, &services.key(TENANT).await, c, "calls", AT)
                .await
                .filter(|u| u.1 == 10)
        })
        .await;
    }
    services.shutdown().await;

    // The committed offsets are the end of each partition: the shutdown checkpoint covered everything.
    let ends = billing_tests::high_watermarks(&env.settings, &env.topics.usage).await;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .set("group.id", &env.settings.rating.group_id)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, _) in &ends {
        tpl.add_partition(&env.topics.usage, *p);
    }
    use rdkafka::consumer::Consumer;
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for (p, high) in &ends {
        let c = committed
            .find_partition(&env.topics.usage, *p)
            .unwrap()
            .offset();
        // A partition that never had a message has nothing to commit.
        if *high > 0 {
            assert_eq!(c, rdkafka::Offset::Offset(*high), "partition {p} committed");
        } else {
            assert!(
                matches!(c, rdkafka::Offset::Invalid | rdkafka::Offset::Offset(0)),
                "partition {p}: {c:?}"
            );
        }
    }
    assert_eq!(ends.iter().map(|e| e.1).sum::<i64>(), 60);

    // After a restart, a retry of an old event is still recognised; a new consumer group replays the whole
    // topic from the earliest offset and totals do not move.
    produce_event(
        &env,
        &event("cus-0", "e0", "api_calls", &[("value", "0.01")]),
        Encoding::Json,
    )
    .await;
    let mut replay = env.settings.clone();
    replay.rating.group_id = format!("{}-replay", env.settings.rating.group_id);
    let services = Services::start(&replay).await;
    produce_event(
        &env,
        &event("cus-0", "after-replay", "api_calls", &[("value", "1")]),
        Encoding::Json,
    )
    .await;
    let usage = eventually(WAIT, "the new event after the replay", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-0",
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 >= 11)
    })
    .await;
    assert_eq!(usage, ("1.10".to_owned(), 11, "0.01".to_owned()));
    for c in &customers[1..] {
        let usage = api_usage(&services.api, &services.key(TENANT).await, c, "calls", AT)
            .await
            .unwrap();
        assert_eq!(usage, ("0.10".to_owned(), 10, "0.00".to_owned()), "{c}");
    }
    services.shutdown().await;
    let ch = clickhouse_totals(&env).await;
    assert_eq!(
        ch.iter().map(|r| r.1).sum::<u64>(),
        51,
        "ClickHouse counts each event once: {ch:?}"
    );
    env.cleanup().await;
}

/// The pause semantics, decided once in the core and checked here end to end: usage during a pause is still
/// metered (only the subscription fee stops), and usage after an immediate cancellation has no subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_during_a_pause_is_metered_and_after_a_cancellation_dead_lettered() {
    use billing_schemas::lifecycle::{
        Lifecycle, LifecycleEvent, SubscriptionCanceled, SubscriptionEffective,
    };
    let env = TestEnv::new("pause").await;
    basic_catalog(&env, &["cus-p"]).await;
    let at = |s: &str| s.parse::<chrono::DateTime<Utc>>().unwrap();
    let lifecycle = |id: &str, payload| LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        occurred_at: at("2026-03-10T00:00:00Z"),
        payload,
    };
    env.publish_lifecycle(&lifecycle(
        "pause-1",
        Lifecycle::SubscriptionPaused(SubscriptionEffective {
            subscription_id: "sub-cus-p".into(),
            customer_id: "cus-p".into(),
            effective_at: at("2026-03-10T00:00:00Z"),
        }),
    ))
    .await;
    env.publish_lifecycle(&lifecycle(
        "cancel-1",
        Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
            subscription_id: "sub-cus-p".into(),
            customer_id: "cus-p".into(),
            effective_at: at("2026-03-20T00:00:00Z"),
            at_period_end: false,
        }),
    ))
    .await;
    let services = Services::start(&env.settings).await;
    // March 14 is inside the pause.
    produce_event(
        &env,
        &event("cus-p", "paused-1", "api_calls", &[("value", "5")]),
        Encoding::Json,
    )
    .await;
    let mut late = event("cus-p", "after-cancel", "api_calls", &[("value", "7")]);
    late.timestamp = at("2026-03-25T00:00:00Z");
    produce_event(&env, &late, Encoding::Json).await;
    let usage = eventually(WAIT, "paused usage in the API", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-p",
            "calls",
            "2026-03-14T00:00:00Z",
        )
        .await
    })
    .await;
    assert_eq!(usage, ("5".to_owned(), 1, "0.05".to_owned()));
    let dead = env.read_topic(&env.topics.usage_dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], dlq_headers::REASON).unwrap_or_default();
    assert!(
        reason.contains("no active subscription"),
        "unexpected reason {reason:?}"
    );
    assert_eq!(
        clickhouse_totals(&env).await,
        vec![("cus-p".to_owned(), 1, Decimal::from(5))]
    );
    services.shutdown().await;
    env.cleanup().await;
}

/// Keys are partitioned like the Java client (murmur2) by our producers, and a record that another partitioner put
/// on the wrong partition is dead-lettered (`wrong_partition`) instead of being counted away from its customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_the_wrong_partition_are_dead_lettered_and_keys_partition_like_java() {
    use billing_runtime::kafka::partition_for_key;
    let env = TestEnv::new("partition").await;
    let partitions = env.settings.kafka.partitions;
    // librdkafka's murmur2_random (what our producer uses) and our function agree, key by key. The payments topic
    // is read by nobody in this test.
    for i in 0..60 {
        let key = format!("acme/cus-{i}");
        let (partition, _) = env.produce(&env.topics.payments, &key, b"x", None).await;
        assert_eq!(
            partition,
            partition_for_key(key.as_bytes(), partitions),
            "{key}"
        );
    }
    basic_catalog(&env, &["cus-w"]).await;
    let services = Services::start(&env.settings).await;
    let home = partition_for_key(b"acme/cus-w", partitions);
    let wrong = ((home + 1) % partitions).to_string();
    let json = r#"{"tenant_id":"acme","event_id":"astray","customer_id":"cus-w","metric_code":"api_calls","timestamp":"2026-03-14T15:09:26Z","properties":{"value":10}}"#;
    kcat_produce(
        &env,
        &[
            "-t",
            &env.topics.usage,
            "-p",
            &wrong,
            "-k",
            "acme/cus-w",
            "-H",
            "content-type=application/json",
        ],
        json.as_bytes(),
    );
    produce_event(
        &env,
        &event("cus-w", "at-home", "api_calls", &[("value", "1")]),
        Encoding::Json,
    )
    .await;
    let usage = eventually(WAIT, "the event at home in the API", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-w",
            "calls",
            AT,
        )
        .await
    })
    .await;
    assert_eq!(usage, ("1".to_owned(), 1, "0.01".to_owned()));
    let dead = env.read_topic(&env.topics.usage_dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], dlq_headers::REASON).unwrap_or_default();
    assert!(reason.starts_with("wrong_partition"), "{reason}");
    assert_eq!(
        clickhouse_totals(&env).await,
        vec![("cus-w".to_owned(), 1, Decimal::from(1))]
    );
    services.shutdown().await;
    env.cleanup().await;
}

/// A 1.5 MB event that its producer compressed under the broker's limit cannot be dead-lettered whole (it is over
/// the producer's message limit once decompressed): rating dead-letters its beginning with its size and hash, and
/// the partition moves on instead of stopping on it at every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_too_large_to_dead_letter_whole_does_not_stop_the_partition() {
    let env = TestEnv::new("poison").await;
    basic_catalog(&env, &["cus-x"]).await;
    let services = Services::start(&env.settings).await;
    let big = format!(
        r#"{{"tenant_id":"acme","event_id":"big","customer_id":"cus-x","metric_code":"api_calls","timestamp":"2026-03-14T15:09:26Z","properties":{{"value":1,"pad":"{}"}}}}"#,
        "a".repeat(1_500_000)
    );
    kcat_produce(
        &env,
        &[
            "-X",
            "partitioner=murmur2_random",
            "-X",
            "message.max.bytes=5000000",
            "-z",
            "lz4",
            "-t",
            &env.topics.usage,
            "-k",
            "acme/cus-x",
            "-H",
            "content-type=application/json",
        ],
        big.as_bytes(),
    );
    produce_event(
        &env,
        &event("cus-x", "after-the-poison", "api_calls", &[("value", "2")]),
        Encoding::Json,
    )
    .await;
    let usage = eventually(WAIT, "the event after the poison in the API", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-x",
            "calls",
            AT,
        )
        .await
    })
    .await;
    assert_eq!(usage, ("2".to_owned(), 1, "0.02".to_owned()));
    let dead = env.read_topic(&env.topics.usage_dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| header(&dead[0], name);
    assert!(header(dlq_headers::REASON)
        .unwrap()
        .contains("exceeds the limit"));
    assert_eq!(
        header(dlq_headers::ORIGINAL_SIZE),
        Some(big.len().to_string())
    );
    assert_eq!(
        header(dlq_headers::ORIGINAL_SHA256).map(|h| h.len()),
        Some(64)
    );
    assert_eq!(dead[0].payload().map(<[u8]>::len), Some(256 * 1024));
    assert!(big.as_bytes().starts_with(dead[0].payload().unwrap()));
    services.shutdown().await;
    env.cleanup().await;
}

/// Reference data published in a Kafka transaction ends its partitions with a transaction marker, which takes an
/// offset but is no message: rating's barrier must compare consumer positions with the end offsets, not the last
/// message read, or it would wait for a message that never comes (and give up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_data_published_in_a_transaction_is_read_to_its_end() {
    use billing_runtime::publish::Publisher;
    use billing_schemas::catalog::{CatalogEvent, Charge, Interval, Plan};
    use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
    use rdkafka::producer::{FutureProducer, Producer};
    let env = TestEnv::new("txn").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .set("partitioner", billing_runtime::kafka::PARTITIONER)
        .set("transactional.id", format!("txn-{}", env.id))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let publisher = Publisher::with_producer(producer.clone(), env.topics.clone());
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let metric = CatalogEvent::metric(
        TENANT,
        at,
        "api_calls",
        Aggregation::Sum,
        Some("value"),
        vec![],
    );
    let plan = CatalogEvent::plan(
        TENANT,
        at,
        Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: "basic".into(),
            name: "Basic".into(),
            interval: Interval::Monthly,
            currency: "EUR".into(),
            amount: "10".into(),
            pay_in_advance: false,
            trial_period_days: 0,
            charges: vec![Charge::on_metric(
                "calls",
                "api_calls",
                ChargeModel::Standard,
                r#"{"amount":"0.01"}"#,
            )],
        },
    );
    publisher.catalog(&metric, Encoding::Json).await.unwrap();
    publisher.catalog(&plan, Encoding::Json).await.unwrap();
    for ev in LifecycleEvent::customer_subscribed(
        TENANT,
        CustomerCreated::new("cus-t", "T", "EUR", "UTC"),
        "sub-cus-t",
        "basic",
        at,
    ) {
        publisher.lifecycle(&ev, Encoding::Avro).await.unwrap();
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    let services = Services::start(&env.settings).await;
    produce_event(
        &env,
        &event("cus-t", "after-txn", "api_calls", &[("value", "3")]),
        Encoding::Json,
    )
    .await;
    let usage = eventually(WAIT, "usage after transactional reference data", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-t",
            "calls",
            AT,
        )
        .await
    })
    .await;
    assert_eq!(usage, ("3".to_owned(), 1, "0.03".to_owned()));
    services.shutdown().await;
    env.cleanup().await;
}
