//! Dead letters that cannot be delivered or queued are sent again (issue 11, fault 1's resend path): the test's own
//! dead-letter topic is deleted before rating starts, and `kafka.message_timeout` is 2 s, so the delivery of a
//! malformed record's dead letter fails; rating keeps sending it (counted in `billing_rating_store_retries_total`)
//! and holds the checkpoint, without exiting. With a producer queue of one record, the next dead letters are
//! refused at once (`billing_rating_dead_letters_unqueued_total`) and kept whole to be sent again. Once the topic
//! exists again every dead letter arrives, and the events around the malformed records are counted exactly once.

use std::time::Duration;

use billing_schemas::{customer_key, encode, Encoding};
use billing_tests::{call_event, calls_reaching, eventually, Services, TestEnv};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;

const TENANT: &str = "acme";
const CUSTOMER: &str = "cus-dlq";
const AT: &str = "2026-03-20T00:00:00Z";

async fn produce(env: &TestEnv, payload: &[u8]) {
    let key = customer_key(TENANT, CUSTOMER);
    env.producer()
        .send(
            FutureRecord::to(&env.topics.usage)
                .key(&key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(Encoding::Json.content_type()),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("usage produced");
}

async fn rating_metric(env: &TestEnv, name: &str) -> i64 {
    billing_tests::metric(&format!("http://{}", env.settings.rating.listen), name).await
}

/// Ten events with `bad` malformed records after the first, rated while the dead-letter topic is missing until
/// every `(metric, at least)` holds; then the topic is created again and everything must arrive once.
async fn outage(mut env: TestEnv, bad: &[&str], until: &[(&str, i64)]) {
    env.settings.kafka.message_timeout = Duration::from_secs(2);
    env.publish_basic_catalog(TENANT, &[CUSTOMER]).await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin
        .delete_topics(&[env.topics.usage_dlq.as_str()], &options)
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");

    let services = Services::start(&env.settings).await;
    let good = |i| encode(&call_event(TENANT, CUSTOMER, i), Encoding::Json).unwrap();
    produce(&env, &good(0)).await;
    for b in bad {
        produce(&env, b.as_bytes()).await;
    }
    for i in 1..10 {
        produce(&env, &good(i)).await;
    }
    for (name, least) in until {
        let seen = eventually(Duration::from_secs(60), name, || async {
            let n = rating_metric(&env, name).await;
            (n >= *least).then_some(n)
        })
        .await;
        eprintln!("{name} = {seen} while the dead-letter topic was missing");
    }
    assert!(
        !services.rating_stopped(),
        "rating exited without its dead-letter topic"
    );

    let created = admin
        .create_topics(
            &[NewTopic::new(
                &env.topics.usage_dlq,
                env.settings.kafka.partitions,
                TopicReplication::Fixed(env.settings.kafka.replication_factor),
            )],
            &options,
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    // Ten events, each once, and every malformed record dead-lettered.
    let usage = calls_reaching(&services, TENANT, CUSTOMER, AT, 10).await;
    assert_eq!(usage, ("10".to_string(), 10, "0.10".to_string()));
    let dead = env
        .read_topic(&env.topics.usage_dlq, bad.len(), Duration::from_secs(60))
        .await;
    for b in bad {
        assert!(
            dead.iter().any(|m| m.payload() == Some(b.as_bytes())),
            "{b} not dead-lettered after the topic came back"
        );
    }
    assert!(
        dead.iter()
            .all(|m| bad.iter().any(|b| m.payload() == Some(b.as_bytes()))),
        "only the malformed records are dead-lettered"
    );
    assert!(!services.rating_stopped(), "rating exited");
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_producer_gave_up_on_is_sent_again_until_it_is_delivered() {
    let env = TestEnv::new("dlq_outage").await;
    // The delivery failed at least twice (the first send and one sent again).
    outage(
        env,
        &[r#"{"tenant_id": "acme", "event_id": "cut-short"#],
        &[("billing_rating_store_retries_total", 2)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_producer_refused_to_queue_is_kept_and_sent_again() {
    let mut env = TestEnv::new("dlq_queue_full").await;
    // One record in the producer's queue: while the first dead letter waits there for its missing topic, the
    // others are refused at once.
    env.settings.kafka.producer_queue_messages = 1;
    outage(
        env,
        &[
            r#"{"tenant_id": "acme", "event_id": "cut-1"#,
            r#"{"tenant_id": "acme", "event_id": "cut-2"#,
            r#"{"tenant_id": "acme", "event_id": "cut-3"#,
        ],
        &[
            ("billing_rating_dead_letters_unqueued_total", 2),
            ("billing_rating_store_retries_total", 3),
        ],
    )
    .await;
}
