//! The thin slice end to end on the real servers: usage produced to Kafka is rated into ScyllaDB totals and
//! ClickHouse rows and served by the API; bad messages are dead-lettered and do not stop consumption.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use billing_runtime::kafka::dlq_headers;
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{api_usage, eventually, Services, TestEnv};
use chrono::{TimeZone, Utc};
use rdkafka::message::{Headers, Message};
use rust_decimal::Decimal;

const WAIT: Duration = Duration::from_secs(60);

fn event(tenant: &str, customer: &str, id: &str, value: &str) -> UsageEvent {
    UsageEvent {
        tenant_id: tenant.into(),
        event_id: id.into(),
        customer_id: customer.into(),
        metric_code: "api_calls".into(),
        timestamp: Utc.with_ymd_and_hms(2026, 3, 14, 15, 9, 26).unwrap(),
        properties: BTreeMap::from([("value".to_owned(), value.to_owned())]),
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

#[derive(clickhouse::Row, serde::Deserialize)]
struct ChTotal {
    customer_id: String,
    events: u64,
    value: i128,
}

async fn clickhouse_totals(env: &TestEnv, tenant: &str) -> Vec<(String, u64, Decimal)> {
    env.clickhouse()
        .query(
            "SELECT customer_id, count() AS events, sum(value) AS value FROM usage_events FINAL \
             WHERE tenant_id = ? GROUP BY customer_id ORDER BY customer_id",
        )
        .bind(tenant)
        .fetch_all::<ChTotal>()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.customer_id,
                r.events,
                Decimal::from_i128_with_scale(r.value, 9).normalize(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_rust_reaches_scylla_clickhouse_and_the_api_exactly() {
    let env = TestEnv::new("slice").await;
    let services = Services::start(&env.settings).await;
    let tenant = "acme";
    // Values with many decimals prove that nothing rounds through floats.
    let values = ["0.1", "0.2", "1.000000001", "2.5", "-0.3"];
    let mut expected = BTreeMap::new();
    for c in 0..4 {
        let customer = format!("cus-{c}");
        for (i, v) in values.iter().enumerate() {
            let encoding = if i % 2 == 0 {
                Encoding::Avro
            } else {
                Encoding::Json
            };
            produce_event(
                &env,
                &event(tenant, &customer, &format!("{customer}-{i}"), v),
                encoding,
            )
            .await;
            let e = expected
                .entry(customer.clone())
                .or_insert((0i64, Decimal::ZERO));
            e.0 += 1;
            e.1 += Decimal::from_str(v).unwrap();
        }
    }
    for (customer, (count, sum)) in &expected {
        assert_eq!(sum.to_string(), "3.500000001");
        let got = eventually(WAIT, "usage in the API", || async {
            api_usage(&services.api, tenant, customer, "api_calls")
                .await
                .filter(|(n, _)| n == count)
        })
        .await;
        assert_eq!(Decimal::from_str(&got.1).unwrap(), *sum, "{customer}");
    }
    let ch = clickhouse_totals(&env, tenant).await;
    let want: Vec<(String, u64, Decimal)> = expected
        .iter()
        .map(|(c, (n, s))| (c.clone(), *n as u64, s.normalize()))
        .collect();
    assert_eq!(ch, want);

    // Another tenant sees nothing of acme's usage.
    assert_eq!(
        api_usage(&services.api, "globex", "cus-0", "api_calls").await,
        None
    );
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_produced_by_kcat_is_rated() {
    let env = TestEnv::new("kcat").await;
    let services = Services::start(&env.settings).await;
    let json = r#"{"tenant_id":"acme","event_id":"kcat-1","customer_id":"cus-k","metric_code":"api_calls","timestamp":"2026-03-14T15:09:26Z","properties":{"value":7.25}}"#;
    let mut child = std::process::Command::new("kcat")
        .args([
            "-P",
            "-b",
            &env.settings.kafka.brokers,
            "-t",
            &env.topics.usage,
            "-k",
            "acme/cus-k",
            "-H",
            "content-type=application/json",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed by deploy/local/stack install");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "kcat failed");
    let (count, sum) = eventually(WAIT, "kcat event in the API", || async {
        api_usage(&services.api, "acme", "cus-k", "api_calls").await
    })
    .await;
    assert_eq!((count, sum.as_str()), (1, "7.25"));
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_reason_and_consumption_continues() {
    let env = TestEnv::new("dlq").await;
    let tenant = "acme";
    let key = customer_key(tenant, "cus-d");
    let good = event(tenant, "cus-d", "good-1", "1");
    let mut wrong_schema = encode(&good, Encoding::Avro).unwrap();
    wrong_schema[4] = 42;
    let random: Vec<u8> = std::iter::once(0xff)
        .chain((1..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
        .collect();
    let missing_field =
        br#"{"tenant_id":"acme","event_id":"x","metric_code":"api_calls","timestamp":1}"#.to_vec();
    let bad_value = encode(&event(tenant, "cus-d", "bad-value", "lots"), Encoding::Json).unwrap();

    produce_event(&env, &good, Encoding::Avro).await;
    let mut bad = Vec::new();
    for (payload, ct, reason) in [
        (random.clone(), None, "undecodable: invalid JSON value"),
        (
            wrong_schema.clone(),
            Some("application/vnd.confluent.avro"),
            "schema id 42 is not accepted here",
        ),
        (
            missing_field.clone(),
            Some("application/json"),
            "missing field `customer_id`",
        ),
        (
            bad_value.clone(),
            Some("application/json"),
            "property \"value\" = \"lots\" is not a decimal number",
        ),
    ] {
        let (partition, offset) = env.produce(&env.topics.usage, &key, &payload, ct).await;
        bad.push((payload, reason, partition, offset));
    }
    produce_event(&env, &event(tenant, "cus-d", "good-2", "2"), Encoding::Json).await;

    // Start rating only after everything is in the topic: it must get through the garbage to good-2.
    let services = Services::start(&env.settings).await;
    eventually(WAIT, "both good events counted", || async {
        api_usage(&services.api, tenant, "cus-d", "api_calls")
            .await
            .filter(|(n, s)| *n == 2 && s == "3")
    })
    .await;

    let dead = env.read_topic(&env.topics.usage_dlq, bad.len(), WAIT).await;
    assert_eq!(
        dead.len(),
        bad.len(),
        "every bad message is dead-lettered once"
    );
    for (payload, reason, partition, offset) in &bad {
        let m = dead
            .iter()
            .find(|m| m.payload() == Some(payload.as_slice()))
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
        assert_eq!(m.key(), Some(key.as_bytes()));
    }
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_topic_counts_nothing_twice_and_offsets_follow_durable_writes() {
    let env = TestEnv::new("replay").await;
    let tenant = "acme";
    for i in 0..50 {
        let customer = format!("cus-{}", i % 5);
        produce_event(
            &env,
            &event(tenant, &customer, &format!("e{i}"), "0.01"),
            Encoding::Avro,
        )
        .await;
    }
    let services = Services::start(&env.settings).await;
    for c in 0..5 {
        eventually(WAIT, "first pass", || async {
            api_usage(&services.api, tenant, &format!("cus-{c}"), "api_calls")
                .await
                .filter(|(n, _)| *n == 10)
        })
        .await;
    }
    services.shutdown().await;

    // The committed offsets are the end of each partition: the shutdown checkpoint covered everything.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .set("group.id", &env.settings.rating.group_id)
        .create()
        .unwrap();
    let mut committed_total = 0;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..env.settings.kafka.partitions {
        tpl.add_partition(&env.topics.usage, p);
    }
    use rdkafka::consumer::Consumer;
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&env.topics.usage, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(high),
            "partition {} committed",
            e.partition()
        );
        committed_total += high;
    }
    assert_eq!(committed_total, 50);

    // A new consumer group replays the whole topic from the earliest offset: totals must not move.
    let mut replay = env.settings.clone();
    replay.rating.group_id = format!("{}-replay", env.settings.rating.group_id);
    let services = Services::start(&replay).await;
    produce_event(
        &env,
        &event(tenant, "cus-0", "after-replay", "1"),
        Encoding::Json,
    )
    .await;
    let (n, sum) = eventually(WAIT, "the new event after the replay", || async {
        api_usage(&services.api, tenant, "cus-0", "api_calls")
            .await
            .filter(|(n, _)| *n >= 11)
    })
    .await;
    assert_eq!((n, sum.as_str()), (11, "1.10"));
    for c in 1..5 {
        let (n, sum) = api_usage(&services.api, tenant, &format!("cus-{c}"), "api_calls")
            .await
            .unwrap();
        assert_eq!((n, sum.as_str()), (10, "0.10"), "cus-{c}");
    }
    services.shutdown().await;
    let ch = clickhouse_totals(&env, tenant).await;
    assert_eq!(
        ch.iter().map(|r| r.1).sum::<u64>(),
        51,
        "ClickHouse counts each event once: {ch:?}"
    );
    env.cleanup().await;
}
