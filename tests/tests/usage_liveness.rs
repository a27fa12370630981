//! Consumer liveness, the failures peers shipped: a rebalance (a second rating process joins the group, really owns
//! partitions and counts events, then is SIGKILLed without a graceful stop) loses and double-counts nothing for any
//! customer, and `/ready` turns red when the consumer has lag but makes no progress. (A new group starting from the
//! earliest offset is covered in usage_pipeline.rs.)

use std::time::Duration;

use billing_schemas::catalog::{Aggregation, ChargeModel};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{api_usage, eventually, free_addr, metric, spawn_service, Services, TestEnv};
use chrono::{TimeZone, Utc};
use rdkafka::producer::FutureRecord;

const TENANT: &str = "live";
const AT: &str = "2026-03-20T00:00:00Z";

async fn setup(env: &TestEnv, customers: usize) {
    env.publish_metric(TENANT, "calls", Aggregation::Count, None, &[])
        .await;
    env.publish_plan(
        TENANT,
        "p",
        "EUR",
        &[(
            "calls",
            "calls",
            ChargeModel::Standard,
            r#"{"amount":"1"}"#,
            None,
        )],
    )
    .await;
    for c in 0..customers {
        env.subscribe(TENANT, &format!("c{c}"), "p", "2026-03-01T00:00:00Z")
            .await;
    }
}

async fn produce(env: &TestEnv, customers: usize, from: usize, to: usize) {
    let producer = env.producer();
    let mut deliveries = Vec::new();
    for i in from..to {
        let customer = format!("c{}", i % customers);
        let ev = UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("e{i}"),
            customer_id: customer.clone(),
            metric_code: "calls".into(),
            timestamp: Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap(),
            properties: Default::default(),
        };
        let payload = encode(&ev, Encoding::Avro).unwrap();
        let key = customer_key(TENANT, &customer);
        deliveries.push(
            producer
                .send_result(
                    FutureRecord::to(&env.topics.usage)
                        .key(&key)
                        .payload(&payload),
                )
                .ok()
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_and_leaving_loses_and_double_counts_nothing() {
    // Scale-out over 12 partitions, as in production.
    let env = TestEnv::with_partitions("rebalance", 12).await;
    const CUSTOMERS: usize = 60;
    setup(&env, CUSTOMERS).await;
    let first = Services::start(&env.settings).await;
    produce(&env, CUSTOMERS, 0, 3_000).await;

    // A second rating process joins the group while events flow: events go on until it has counted some (it owns
    // partitions), then it is killed without a graceful stop (no final checkpoint, no leave-group).
    let second_addr = free_addr();
    let mut second = spawn_service(
        &env.settings,
        "rating",
        &[("BILLING__RATING__LISTEN", second_addr.to_string())],
    );
    let second_metrics = format!("http://{second_addr}");
    let accepted = "billing_rating_events_total{outcome=\"accepted\"}";
    let mut sent = 3_000;
    let mut counted_by_second = 0;
    while counted_by_second == 0 {
        assert!(sent < 60_000, "the second instance never counted an event");
        produce(&env, CUSTOMERS, sent, sent + 600).await;
        sent += 600;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            reqwest::get(format!("{second_metrics}/health")),
        )
        .await
        {
            if r.status() == 200 {
                counted_by_second = metric(&second_metrics, accepted).await;
            }
        }
    }
    produce(&env, CUSTOMERS, sent, sent + 1_200).await;
    sent += 1_200;
    second.kill().expect("SIGKILL the second instance");
    second.wait().unwrap();
    eprintln!("the second instance counted {counted_by_second}+ events before it was killed");
    produce(&env, CUSTOMERS, sent, sent + 3_000).await;
    sent += 3_000;
    let each = (sent / CUSTOMERS) as u64;

    for c in 0..CUSTOMERS {
        let usage = eventually(
            Duration::from_secs(90),
            "every event counted once",
            || async {
                api_usage(
                    &first.api,
                    &first.key(TENANT).await,
                    &format!("c{c}"),
                    "calls",
                    AT,
                )
                .await
                .filter(|u| u.1 >= each)
            },
        )
        .await;
        assert_eq!((usage.0, usage.1), (each.to_string(), each), "c{c}");
    }
    // Nothing more arrives later either (a double count would show after the last checkpoint).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in 0..CUSTOMERS {
        let usage = api_usage(
            &first.api,
            &first.key(TENANT).await,
            &format!("c{c}"),
            "calls",
            AT,
        )
        .await
        .unwrap();
        assert_eq!(usage.1, each, "c{c}");
    }
    first.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_red_when_the_consumer_has_lag_but_makes_no_progress() {
    let mut env = TestEnv::new("stall").await;
    setup(&env, 2).await;
    // A consumer whose checkpoints never complete: it reads, but nothing becomes durable or committed.
    env.settings.rating.checkpoint_interval = Duration::from_secs(3600);
    env.settings.rating.checkpoint_events = 1_000_000;
    env.settings.rating.stall_timeout = Duration::from_secs(1);
    let services = Services::start(&env.settings).await;
    let ready = format!("http://{}/ready", env.settings.rating.listen);
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "rating ready while idle",
        || async {
            let r = http.get(&ready).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    produce(&env, 2, 0, 10).await;
    let body: serde_json::Value = eventually(
        Duration::from_secs(30),
        "rating not ready with lag",
        || async {
            let r = http.get(&ready).send().await.ok()?;
            if r.status() == 503 {
                r.json().await.ok()
            } else {
                None
            }
        },
    )
    .await;
    assert!(
        body["checks"]["consumer"]
            .as_str()
            .unwrap()
            .contains("lag 10"),
        "{body}"
    );
    assert_eq!(
        body["checks"]["kafka"], "ok",
        "the connections are fine; only consumption is stuck"
    );
    services.shutdown().await;
    env.cleanup().await;
}
