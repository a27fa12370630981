//! Rating's restart does not grow with `billing.lifecycle`'s history: once caught up it writes a snapshot of the
//! lifecycle state it folded (customers, subscription histories, clocks) to the store, and a restart reads the
//! newest snapshot and folds only the lifecycle events after it. Checked here end to end: the restarted rating folds
//! exactly the events published after the snapshot (`billing_rating_reference_events_total`), attributes usage of
//! customers known only from the snapshot, applies a change made before the snapshot (a cancellation) and one made
//! after it, and counts a customer created after it. A snapshot that does not fit the topic (positions past its
//! end, as after the topic was deleted and created again) is not used: the newest that fits is, and without one
//! the topic is read from its start. A snapshot that lost a chunk is deleted, and the one before it used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use billing_runtime::kafka::dlq_headers;
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent, SubscriptionCanceled};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use billing_store::reference_snapshots::{rating_snapshot_name, ReferenceSnapshots};
use billing_tests::{api_usage, eventually, Services, TestEnv};
use chrono::{DateTime, Utc};
use rdkafka::message::{Headers, Message};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// An immediate cancellation of `customer`'s subscription from March 20.
fn cancellation(customer: &str) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("cancel-{customer}"),
        occurred_at: at("2026-03-20T00:00:00Z"),
        payload: Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
            subscription_id: format!("sub-{customer}"),
            customer_id: customer.into(),
            effective_at: at("2026-03-20T00:00:00Z"),
            at_period_end: false,
        }),
    }
}

/// One call of `customer` at `when`.
async fn call(env: &TestEnv, customer: &str, id: &str, when: &str) {
    let ev = UsageEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        customer_id: customer.into(),
        metric_code: "api_calls".into(),
        timestamp: at(when),
        properties: [("value".to_owned(), "1".to_owned())].into(),
    };
    env.produce(
        &env.topics.usage,
        &customer_key(TENANT, customer),
        &encode(&ev, Encoding::Json).unwrap(),
        Some(Encoding::Json.content_type()),
    )
    .await;
}

/// Wait until `customer`'s March usage has `n` events: exactly `n` units.
async fn counted(services: &Services, customer: &str, n: u64) {
    let key = services.key(TENANT).await;
    let usage = eventually(WAIT, &format!("{customer}'s {n} calls"), || {
        let key = key.clone();
        async move {
            api_usage(
                &services.api,
                &key,
                customer,
                "calls",
                "2026-03-14T00:00:00Z",
            )
            .await
            .filter(|u| u.1 >= n)
        }
    })
    .await;
    assert_eq!((usage.0, usage.1), (n.to_string(), n), "{customer}");
}

/// Lifecycle events rating folded since its start.
async fn lifecycle_folded(env: &TestEnv) -> i64 {
    billing_tests::metric(
        &format!("http://{}", env.settings.rating.listen),
        "billing_rating_reference_events_total{topic=\"lifecycle\"}",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_snapshot_and_only_the_lifecycle_events_after_it() {
    let mut env = TestEnv::new("reference_snapshot").await;
    env.settings.rating.reference_snapshot_events = 1;
    env.settings.rating.reference_snapshot_interval = Duration::ZERO;
    // Seven lifecycle events before the snapshot: three customers created and subscribed, one cancellation.
    env.publish_basic_catalog(TENANT, &["cus-0", "cus-1", "cus-2"])
        .await;
    env.publish_lifecycle(&cancellation("cus-1")).await;
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let snapshots = ReferenceSnapshots::new(session.clone(), &env.settings.cassandra.keyspace)
        .await
        .unwrap();
    let name = rating_snapshot_name(&env.topics.lifecycle);

    let services = Services::start(&env.settings).await;
    call(&env, "cus-2", "a", "2026-03-14T00:00:00Z").await;
    counted(&services, "cus-2", 1).await;
    assert_eq!(
        lifecycle_folded(&env).await,
        7,
        "a first start folds the whole topic"
    );
    let head = eventually(WAIT, "a snapshot of all seven events", || async {
        snapshots
            .heads(&name)
            .await
            .unwrap()
            .into_iter()
            .find(|h| h.sha256.is_some() && h.folded == 7)
    })
    .await;
    assert_eq!(head.customers, 3);
    services.shutdown().await;

    // After the snapshot: cus-0 canceled, cus-3 created and subscribed.
    env.publish_lifecycle(&cancellation("cus-0")).await;
    env.subscribe(TENANT, "cus-3", "basic", "2026-03-01T00:00:00Z")
        .await;
    let services = Services::start(&env.settings).await;
    call(&env, "cus-0", "after-cancel-0", "2026-03-25T00:00:00Z").await;
    call(&env, "cus-1", "after-cancel-1", "2026-03-25T00:00:00Z").await;
    call(&env, "cus-2", "b", "2026-03-14T00:00:00Z").await;
    call(&env, "cus-3", "a", "2026-03-14T00:00:00Z").await;
    counted(&services, "cus-2", 2).await;
    counted(&services, "cus-3", 1).await;
    assert_eq!(
        lifecycle_folded(&env).await,
        3,
        "a start from the snapshot folds only the three events after it"
    );
    // Both cancellations hold: the one in the snapshot and the one folded after it.
    let dead = env.read_topic(&env.topics.usage_dlq, 2, WAIT).await;
    let mut keys: Vec<String> = dead
        .iter()
        .map(|m| {
            let reason = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == dlq_headers::REASON))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            assert!(
                reason.contains("no active subscription"),
                "unexpected reason {reason:?}"
            );
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [customer_key(TENANT, "cus-0"), customer_key(TENANT, "cus-1")]
    );
    services.shutdown().await;

    // A snapshot that lost a chunk is deleted and the one before it used: the start folds the three events after
    // that one, then writes a snapshot of all ten again.
    let newest = snapshots
        .heads(&name)
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.sha256.is_some() && h.folded == 10)
        .expect("a snapshot of all ten events");
    session
        .query_unpaged(
            format!(
                "DELETE FROM {}.reference_snapshot_chunks WHERE name = ? AND snapshot_id = ? AND chunk = 0",
                env.settings.cassandra.keyspace
            ),
            (&name, newest.id),
        )
        .await
        .unwrap();
    let services = Services::start(&env.settings).await;
    call(&env, "cus-2", "c", "2026-03-14T00:00:00Z").await;
    counted(&services, "cus-2", 3).await;
    assert_eq!(
        lifecycle_folded(&env).await,
        3,
        "the snapshot before the damaged one is used"
    );
    eventually(WAIT, "a new snapshot of all ten events", || async {
        let heads = snapshots.heads(&name).await.unwrap();
        (heads.iter().all(|h| h.id != newest.id)
            && heads.iter().any(|h| h.sha256.is_some() && h.folded == 10))
        .then_some(())
    })
    .await;
    services.shutdown().await;

    // A snapshot whose positions are past the topic's end (the topic was made again since) is the newest, and is
    // passed over for the newest that fits: the one the last start wrote once it had folded all ten events.
    let partitions = env.settings.kafka.partitions;
    let past_the_end: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 1_000_000)).collect();
    let empty = billing_schemas::reference::Reference::for_attribution()
        .encode_lifecycle_state()
        .unwrap();
    let unfit = || snapshots.write(&name, &past_the_end, 0, &empty);
    unfit().await.unwrap();
    let services = Services::start(&env.settings).await;
    call(&env, "cus-3", "b", "2026-03-14T00:00:00Z").await;
    counted(&services, "cus-3", 2).await;
    assert_eq!(
        lifecycle_folded(&env).await,
        0,
        "the snapshot of all ten events is used"
    );
    services.shutdown().await;

    // With only the unfit one left, the topic is read from its start, and attribution is as before.
    session
        .query_unpaged(
            format!(
                "TRUNCATE {}.reference_snapshots",
                env.settings.cassandra.keyspace
            ),
            (),
        )
        .await
        .unwrap();
    unfit().await.unwrap();
    let services = Services::start(&env.settings).await;
    call(&env, "cus-3", "c", "2026-03-14T00:00:00Z").await;
    call(
        &env,
        "cus-0",
        "after-cancel-0-again",
        "2026-03-25T00:00:00Z",
    )
    .await;
    counted(&services, "cus-3", 3).await;
    assert_eq!(
        lifecycle_folded(&env).await,
        10,
        "an unfit snapshot is not used"
    );
    assert_eq!(
        env.read_topic(&env.topics.usage_dlq, 3, WAIT).await.len(),
        3
    );
    services.shutdown().await;
    env.cleanup().await;
}
