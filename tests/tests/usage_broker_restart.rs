//! A Kafka broker restart mid-stream (issue 11, fault 5): the local stack's only broker is killed (SIGKILL, so it
//! recovers its logs on start) while usage is being produced and rated, and started again by the stack script.
//! Rating keeps running through it (its consumer, its offset commits and its reference reads fail and are retried),
//! and afterwards every event is counted exactly once: in the aggregates the API serves, and in ClickHouse, where
//! no row is there twice even without `FINAL` (rating never crashed, so nothing was replayed into it). Producers
//! retry what the broker did not acknowledge, so the topic may hold an event twice: dedup keeps it once. Malformed
//! records among them all reach the dead-letter topic (a dead letter the producer gave up on is sent again). Its
//! own test binary, so that the restart does not disturb other tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{
    api_usage, call_event, calls_reaching, eventually, kafka_pid, Services, TestEnv,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const TENANT: &str = "acme";
const AT: &str = "2026-03-20T00:00:00Z";
const CUSTOMERS: [&str; 4] = ["cus-k0", "cus-k1", "cus-k2", "cus-k3"];
const PER_CUSTOMER: usize = 400;
/// One malformed record (to be dead-lettered) after every this many events of the first customer.
const BAD_EVERY: usize = 50;

/// Produce every event, customers in turn, each until the broker acknowledges it (a failed delivery is sent again:
/// it may have been written anyway, which dedup must absorb), and a malformed record for the first customer every
/// [`BAD_EVERY`] events. `sent` counts acknowledged events.
async fn produce_all(env: Arc<TestEnv>, sent: Arc<AtomicUsize>) -> usize {
    let producer = env.producer();
    let mut retries = 0;
    for i in 0..PER_CUSTOMER {
        for customer in CUSTOMERS {
            let bad = customer == CUSTOMERS[0] && i % BAD_EVERY == 0;
            let ev = call_event(TENANT, customer, i);
            let key = customer_key(TENANT, customer);
            let payloads = if bad {
                vec![
                    bad_payload(i).into_bytes(),
                    encode(&ev, Encoding::Json).unwrap(),
                ]
            } else {
                vec![encode(&ev, Encoding::Json).unwrap()]
            };
            for payload in payloads {
                loop {
                    let record = FutureRecord::to(&env.topics.usage)
                        .key(&key)
                        .payload(&payload)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "content-type",
                            value: Some(Encoding::Json.content_type()),
                        }));
                    match producer.send(record, Duration::from_secs(30)).await {
                        Ok(_) => break,
                        Err((e, _)) => {
                            retries += 1;
                            assert!(retries < 1_000, "the broker never came back: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
    }
    retries
}

/// The malformed record sent before event `i` of the first customer: JSON cut short.
fn bad_payload(i: usize) -> String {
    format!("{{\"tenant_id\": \"{TENANT}\", \"event_id\": \"bad-{i}")
}

fn stack_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let env = TestEnv::new("broker").await;
    env.publish_basic_catalog(TENANT, &CUSTOMERS).await;
    let services = Services::start(&env.settings).await;
    let env = Arc::new(env);
    let total = CUSTOMERS.len() * PER_CUSTOMER;
    let sent = Arc::new(AtomicUsize::new(0));
    let producing = tokio::spawn(produce_all(env.clone(), sent.clone()));

    // A third of the events in, with some of them rated: kill the broker.
    eventually(
        Duration::from_secs(60),
        "a third of the events sent",
        || async { (sent.load(Ordering::SeqCst) >= total / 3).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(60), "some events rated", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            CUSTOMERS[0],
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 > 0)
    })
    .await;
    let pid = kafka_pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    eprintln!(
        "broker {pid} killed after {} acknowledged events",
        sent.load(Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!services.rating_stopped(), "rating exited without a broker");
    let started = tokio::process::Command::new(stack_script())
        .arg("up")
        .status()
        .await
        .unwrap();
    assert!(started.success(), "deploy/local/stack up after the kill");

    let retries = tokio::time::timeout(Duration::from_secs(240), producing)
        .await
        .expect("every event acknowledged after the restart")
        .unwrap();
    eprintln!("all {total} events acknowledged; {retries} deliveries were sent again");
    for customer in CUSTOMERS {
        let usage = calls_reaching(&services, TENANT, customer, AT, PER_CUSTOMER as u64).await;
        assert_eq!(
            usage,
            (
                PER_CUSTOMER.to_string(),
                PER_CUSTOMER as u64,
                format!("{}.00", PER_CUSTOMER / 100)
            ),
            "{customer}"
        );
    }
    let expected = total as u64;
    let counts = eventually(
        Duration::from_secs(60),
        "every event in ClickHouse",
        || async {
            let c = env.usage_event_counts(TENANT, true).await?;
            (c.rows >= expected).then_some(c)
        },
    )
    .await;
    assert_eq!((counts.rows, counts.distinct), (expected, expected));
    let raw = env.usage_event_counts(TENANT, false).await.unwrap();
    assert_eq!(
        (raw.rows, raw.distinct),
        (expected, expected),
        "a row twice in ClickHouse without FINAL: something was rated twice"
    );
    // Every malformed record dead-lettered (one may be there twice: a dead letter sent again after a delivery that
    // failed but was written anyway).
    let expected_dead: std::collections::BTreeSet<String> = (0..PER_CUSTOMER)
        .step_by(BAD_EVERY)
        .map(bad_payload)
        .collect();
    let dead: std::collections::BTreeSet<String> = env
        .read_topic(
            &env.topics.usage_dlq,
            expected_dead.len() * 2,
            Duration::from_secs(15),
        )
        .await
        .iter()
        .map(|m| {
            use rdkafka::message::Message;
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
        })
        .collect();
    assert_eq!(dead, expected_dead, "the malformed records, dead-lettered");
    assert!(!services.rating_stopped(), "rating exited");
    services.shutdown().await;
    if let Ok(env) = Arc::try_unwrap(env) {
        env.cleanup().await;
    }
}
