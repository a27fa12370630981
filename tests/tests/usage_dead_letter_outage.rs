//! A dead letter the producer gave up on is sent again (issue 11, fault 1's resend path): the test's own
//! dead-letter topic is deleted before rating starts, and `kafka.message_timeout` is 2 s, so the delivery of a
//! malformed record's dead letter fails; rating keeps sending it (counted in `billing_rating_store_retries_total`)
//! and holds the checkpoint, without exiting. Once the topic exists again the dead letter arrives, and the events
//! after the malformed record are counted exactly once.

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
const BAD: &str = r#"{"tenant_id": "acme", "event_id": "cut-short"#;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_producer_gave_up_on_is_sent_again_until_it_is_delivered() {
    let mut env = TestEnv::new("dlq_outage").await;
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
    produce(
        &env,
        &encode(&call_event(TENANT, CUSTOMER, 0), Encoding::Json).unwrap(),
    )
    .await;
    produce(&env, BAD.as_bytes()).await;
    for i in 1..10 {
        produce(
            &env,
            &encode(&call_event(TENANT, CUSTOMER, i), Encoding::Json).unwrap(),
        )
        .await;
    }
    // The delivery failed at least twice (the first send and one sent again), and rating is still running.
    let retries = eventually(
        Duration::from_secs(60),
        "the dead letter sent again",
        || async {
            let r = rating_metric(&env, "billing_rating_store_retries_total").await;
            (r >= 2).then_some(r)
        },
    )
    .await;
    assert!(
        !services.rating_stopped(),
        "rating exited without its dead-letter topic"
    );
    eprintln!("dead letter sent again {retries} times while its topic was missing");

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

    // Ten events, each once, and the malformed record dead-lettered with its reason.
    let usage = calls_reaching(&services, TENANT, CUSTOMER, AT, 10).await;
    assert_eq!(usage, ("10".to_string(), 10, "0.10".to_string()));
    let dead = env
        .read_topic(&env.topics.usage_dlq, 1, Duration::from_secs(60))
        .await;
    assert!(!dead.is_empty(), "no dead letter after the topic came back");
    assert!(
        dead.iter().all(|m| m.payload() == Some(BAD.as_bytes())),
        "only the malformed record is dead-lettered"
    );
    assert!(!services.rating_stopped(), "rating exited");
    services.shutdown().await;
    env.cleanup().await;
}
