//! Replay after a reference change (issue 11, fault 8): a crash between a checkpoint's aggregates and its dedup ids,
//! then a backdated plan change, then the replay. Without the checkpoint's applied window the replayed events would
//! land in the new plan's aggregate (whose offset guard has never seen them) and count twice.
//!
//! The crash is reproduced in the store as it leaves it: rating rates ten events (one refused), stops, and the test
//! deletes the customer's dedup blocks (written with the last batch of its aggregates: lost together with it,
//! except for a customer whose aggregates take several batches) and moves the group's committed offset back to the
//! first event. Every event must still count once, the refused one stays refused, and its id stays
//! free for a corrected resend.

use std::sync::Arc;
use std::time::Duration;

use billing_schemas::catalog::ChargeModel;
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent, SubscriptionChanged};
use billing_schemas::{customer_key, encode, Encoding};
use billing_store::usage::UsageStore;
use billing_tests::{call_event, eventually, rating_caught_up, Services, TestEnv};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TENANT: &str = "acme";
const CUSTOMER: &str = "cus-replay";

/// Events counted per charge of the customer's aggregates, as stored.
async fn counted(store: &UsageStore) -> (u64, u64) {
    let usage = store.aggregates(TENANT, CUSTOMER).await.unwrap();
    let of = |charge: &str| {
        usage
            .aggregates
            .iter()
            .filter(|(k, _)| k.charge_id == charge)
            .map(|(_, s)| s.running.events_count)
            .sum()
    };
    (of("calls"), of("pro_calls"))
}

/// Produce one `api_calls` event `{CUSTOMER}-{i}` with `value`; its partition and offset.
async fn produce(env: &TestEnv, i: usize, value: &str) -> (i32, i64) {
    let mut event = call_event(TENANT, CUSTOMER, i);
    event.properties.insert("value".into(), value.into());
    env.produce(
        &env.topics.usage,
        &customer_key(TENANT, CUSTOMER),
        &encode(&event, Encoding::Json).unwrap(),
        Some("application/json"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_checkpoint_applied_count_once_when_a_plan_change_lands_before_their_replay() {
    let env = TestEnv::new("replay_window").await;
    env.publish_basic_catalog(TENANT, &[CUSTOMER]).await;
    env.publish_plan(
        TENANT,
        "pro",
        "EUR",
        &[(
            "pro_calls",
            "api_calls",
            ChargeModel::Standard,
            r#"{"amount":"0.02"}"#,
            None,
        )],
    )
    .await;
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let store = UsageStore::new(session.clone(), &env.settings.cassandra.keyspace)
        .await
        .unwrap();

    // Ten events on the basic plan, the fifth with a negative value (refused), all rated in one checkpoint: they
    // are in the topic before rating starts, and checkpoints are 10 s apart (the crash below loses one
    // checkpoint's dedup ids; the ones before it were durable).
    let mut first = None;
    for i in 0..10 {
        let at = produce(&env, i, if i == 4 { "-1" } else { "1" }).await;
        first.get_or_insert(at);
    }
    let (partition, first_offset) = first.unwrap();
    let mut once = env.settings.clone();
    once.rating.checkpoint_interval = Duration::from_secs(10);
    let services = Services::start(&once).await;
    eventually(Duration::from_secs(120), "nine events counted", || async {
        (counted(&store).await == (9, 0)).then_some(())
    })
    .await;
    rating_caught_up(&env, Duration::from_secs(120)).await;
    services.shutdown().await;
    let window = store.load(TENANT, CUSTOMER).await.unwrap().window;
    let window = window.expect("the checkpoint stored its applied window");
    assert_eq!(
        (window.partition, window.from, window.to, window.rejected),
        (
            partition,
            first_offset,
            first_offset + 9,
            vec![first_offset + 4]
        ),
        "one checkpoint covered the ten events"
    );

    // The crash: the checkpoint's dedup ids are lost and its offsets were not committed.
    session
        .query_unpaged(
            format!(
                "DELETE FROM {}.usage_aggregates WHERE tenant_id = ? AND customer_id = ? AND subscription_id = ''",
                env.settings.cassandra.keyspace
            ),
            (TENANT, CUSTOMER),
        )
        .await
        .unwrap();
    let group: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .set("group.id", &env.settings.rating.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&env.topics.usage, partition, Offset::Offset(first_offset))
        .unwrap();
    group.commit(&tpl, CommitMode::Sync).unwrap();
    drop(group);

    // Before the replay, the subscription moves to `pro` from before the events: they now attribute to
    // `pro_calls`.
    let changed_at: DateTime<Utc> = "2026-03-10T00:00:00Z".parse().unwrap();
    env.publish_lifecycle(&LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: "backdated-upgrade".into(),
        occurred_at: changed_at,
        payload: Lifecycle::SubscriptionChanged(SubscriptionChanged {
            subscription_id: format!("sub-{CUSTOMER}"),
            customer_id: CUSTOMER.into(),
            new_plan_code: "pro".into(),
            effective_at: changed_at,
            at_period_end: false,
        }),
    })
    .await;

    // The replay, then a new event and the refused one corrected under its own id: both count, on `pro`.
    let services = Services::start(&env.settings).await;
    produce(&env, 10, "1").await;
    produce(&env, 4, "1").await;
    eventually(
        Duration::from_secs(120),
        "the two new events counted",
        || async { (counted(&store).await.1 >= 2).then_some(()) },
    )
    .await;
    rating_caught_up(&env, Duration::from_secs(120)).await;
    assert_eq!(
        counted(&store).await,
        (9, 2),
        "(basic, pro) events counted after the replay"
    );
    let dead = env
        .read_topic(&env.topics.usage_dlq, 3, Duration::from_secs(10))
        .await;
    assert_eq!(
        dead.len(),
        2,
        "the negative event is refused on the first run and again on the replay"
    );
    services.shutdown().await;
    env.cleanup().await;
}
