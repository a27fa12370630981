//! Rating loads the customers of a batch of messages together (`UsageStore::load_many`: one `IN` query per table
//! for up to 64 customers of a tenant). Against the real store, what it reads must be what the one-customer load
//! reads: aggregates with their unique values, dedup ids from the blocks in the customer's partition and from the
//! two legacy tables, the applied window, and nothing for a customer with nothing stored; across tenants and past
//! one query's size. And a reader of aggregates never sees the blocks.

use std::collections::HashMap;
use std::sync::Arc;

use billing_core::aggregation::{AggregationType, RunningAggregate};
use billing_store::usage::{CustomerUsage, CustomerWrite, UsageStore, MAX_CUSTOMERS_PER_READ};
use billing_store::usage_aggregates::{aggregation_name, AggKey, AggState, AppliedWindow};
use billing_store::usage_dedup::{encode_block, IdHash};
use billing_tests::TestEnv;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// What customer `c` of a tenant has stored: nothing (every fifth), or a summed aggregate, a unique-count one with
/// `c % 3` values, a window, and ids in two checkpoints' blocks.
fn writes_of(tenant: &str, c: usize) -> Vec<CustomerWrite> {
    if c.is_multiple_of(5) {
        return Vec::new();
    }
    let customer = format!("cus-{c}");
    let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let key = |charge: &str| AggKey {
        subscription_id: format!("sub-{c}"),
        charge_id: charge.into(),
        period_start: start,
        group_key: String::new(),
    };
    let state = |aggregation: AggregationType, events: u64, offset: i64| AggState {
        period_end: "2026-12-01T00:00:00Z".parse().unwrap(),
        metric_code: "calls".into(),
        aggregation: aggregation_name(aggregation).into(),
        charge_model: "standard".into(),
        charge_properties: r#"{"amount":"0.01"}"#.into(),
        currency: "EUR".into(),
        running: RunningAggregate {
            events_count: events,
            sum: Decimal::new(c as i64 * 125, 2),
            ..Default::default()
        },
        last_partition: (c % 12) as i32,
        last_offset: offset,
    };
    let ids = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| IdHash::of(&format!("{tenant}-{c}-{i}")))
            .collect()
    };
    let unique: Vec<String> = (0..c % 3).map(|i| format!("user-{i}")).collect();
    vec![
        CustomerWrite {
            tenant: tenant.into(),
            customer: customer.clone(),
            aggregates: vec![(
                key("calls"),
                state(AggregationType::SumAgg, 3, 10),
                Vec::new(),
            )],
            seen: ids(0, 3),
            window: Some(AppliedWindow {
                partition: (c % 12) as i32,
                from: 8,
                to: 10,
                rejected: Vec::new(),
            }),
            block_id: uuid::Uuid::new_v4(),
        },
        CustomerWrite {
            tenant: tenant.into(),
            customer,
            aggregates: vec![(
                key("users"),
                state(AggregationType::UniqueCountAgg, unique.len() as u64, 14),
                unique,
            )],
            seen: ids(3, 4),
            window: Some(AppliedWindow {
                partition: (c % 12) as i32,
                from: 11,
                to: 14,
                rejected: vec![12],
            }),
            block_id: uuid::Uuid::new_v4(),
        },
    ]
}

/// Everything a load read, comparable: aggregates, which of `ids` it knows as counted, the window.
type Loaded = (
    HashMap<AggKey, AggState>,
    Vec<bool>,
    Option<AppliedWindow>,
    usize,
);

fn comparable(usage: CustomerUsage, ids: &[IdHash]) -> Loaded {
    let known = ids.iter().map(|id| usage.seen.contains(id)).collect();
    (
        usage.aggregates.into_iter().collect(),
        known,
        usage.window,
        usage.seen.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_customers_together_reads_what_loading_each_one_reads() {
    let env = TestEnv::new("store_loads").await;
    let ks = env.settings.cassandra.keyspace.clone();
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    // An id of the legacy one-row-per-id table, written before the store opens (it reads the table only if it held
    // rows then).
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.usage_dedup (tenant_id, customer_id, event_id) VALUES ('acme', 'cus-7', 'legacy-1')"
            ),
            (),
        )
        .await
        .unwrap();
    // And a block of the legacy usage_dedup_blocks (where blocks were kept before they moved into the customer's
    // usage_aggregates partition).
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.usage_dedup_blocks (tenant_id, customer_id, block_id, written_at, ids) \
                 VALUES ('acme', 'cus-8', uuid(), toTimestamp(now()), ?)"
            ),
            (encode_block(&[IdHash::of("legacy-block-1")]),),
        )
        .await
        .unwrap();
    let store = UsageStore::new(session.clone(), &ks).await.unwrap();

    // Two tenants, the first with more customers than one query names.
    let tenants = [("acme", MAX_CUSTOMERS_PER_READ * 2 + 7), ("globex", 6)];
    let mut named: Vec<(String, String)> = Vec::new();
    for (tenant, n) in tenants {
        for c in 0..n {
            named.push((tenant.into(), format!("cus-{c}")));
            // Two checkpoints, one after the other, as rating writes them.
            for write in writes_of(tenant, c) {
                store.save_checkpoint(&[write]).await.unwrap();
            }
        }
    }
    let ids_of = |tenant: &str, customer: &str| -> Vec<IdHash> {
        let mut ids: Vec<IdHash> = (0..8)
            .map(|i| IdHash::of(&format!("{tenant}-{}-{i}", &customer[4..])))
            .collect();
        ids.push(IdHash::of("legacy-1"));
        ids.push(IdHash::of("legacy-block-1"));
        ids
    };

    let pairs: Vec<(&str, &str)> = named
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .collect();
    let mut together = store.load_many(&pairs).await.unwrap();
    assert_eq!(
        together.len(),
        named.len(),
        "every customer named is answered"
    );

    let mut stored = 0;
    for (tenant, customer) in &named {
        let ids = ids_of(tenant, customer);
        let one = comparable(store.load(tenant, customer).await.unwrap(), &ids);
        let many = comparable(
            together
                .remove(&(tenant.clone(), customer.clone()))
                .unwrap(),
            &ids,
        );
        assert_eq!(many, one, "{tenant}/{customer}");
        let c: usize = customer[4..].parse().unwrap();
        let (aggregates, known, window, seen) = one;
        let legacy = *tenant == "acme" && c == 7;
        let legacy_block = *tenant == "acme" && c == 8;
        assert_eq!(known[8], legacy, "{tenant}/{customer}: the legacy id");
        assert_eq!(
            known[9], legacy_block,
            "{tenant}/{customer}: the legacy block"
        );
        if c.is_multiple_of(5) {
            assert!(aggregates.is_empty() && window.is_none(), "{customer}");
            assert_eq!(seen, usize::from(legacy), "{tenant}/{customer}");
            continue;
        }
        stored += 1;
        // What was written is what is read: 7 ids, both aggregates, the unique values, the last window.
        let legacy_ids = usize::from(legacy) + usize::from(legacy_block);
        assert_eq!(seen, 7 + legacy_ids, "{tenant}/{customer}");
        assert_eq!(known[..7], [true; 7], "{tenant}/{customer}");
        assert!(!known[7], "an id no checkpoint wrote is not known");
        assert_eq!(aggregates.len(), 2, "{tenant}/{customer}");
        // A reader of aggregates (the usage API, the bill run) gets them, not the blocks.
        let read = store.aggregates(tenant, customer).await.unwrap();
        let read_aggregates: HashMap<_, _> = read.aggregates.into_iter().collect();
        assert_eq!(read_aggregates, aggregates, "{tenant}/{customer}");
        assert!(read.seen.is_empty());
        let users = aggregates
            .iter()
            .find(|(k, _)| k.charge_id == "users")
            .map(|(_, s)| s.running.unique.len());
        assert_eq!(users, Some(c % 3), "{tenant}/{customer}");
        assert_eq!(
            window.map(|w| (w.from, w.to, w.rejected)),
            Some((11, 14, vec![12])),
            "{tenant}/{customer}"
        );
    }
    assert_eq!(stored, 108 + 4, "customers with something stored, checked");

    // Ids of events that changed no aggregate: blocks alone in the partition.
    let only = [IdHash::of("only-1"), IdHash::of("only-2")];
    store
        .save_checkpoint(&[CustomerWrite {
            tenant: "acme".into(),
            customer: "cus-ids-only".into(),
            seen: only.to_vec(),
            block_id: uuid::Uuid::new_v4(),
            ..Default::default()
        }])
        .await
        .unwrap();
    let mut loaded = store
        .load_many(&[("acme", "cus-ids-only"), ("acme", "cus-1")])
        .await
        .unwrap();
    let usage = loaded
        .remove(&("acme".to_owned(), "cus-ids-only".to_owned()))
        .unwrap();
    assert!(usage.aggregates.is_empty() && usage.window.is_none());
    assert!(only.iter().all(|id| usage.seen.contains(id)) && usage.seen.len() == 2);
    assert!(store
        .aggregates("acme", "cus-ids-only")
        .await
        .unwrap()
        .aggregates
        .is_empty());
    env.cleanup().await;
}

/// An operator may drop the legacy dedup tables once their rows expired, and only a foreign write can leave a torn
/// dedup block in a customer's partition: neither may stop the store from opening or a customer from loading (a
/// failed load is retried forever and stops the customer's partition). The torn block is left out; everything else
/// of the customer loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_legacy_tables_and_a_torn_block_do_not_stop_loads() {
    let env = TestEnv::new("store_torn").await;
    let ks = env.settings.cassandra.keyspace.clone();
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    for table in ["usage_dedup", "usage_dedup_blocks"] {
        session
            .query_unpaged(format!("DROP TABLE {ks}.{table}"), ())
            .await
            .unwrap();
    }
    let store = UsageStore::new(session.clone(), &ks).await.unwrap();
    for write in writes_of("acme", 1) {
        store.save_checkpoint(&[write]).await.unwrap();
    }
    // Two torn blocks: one without its ids, one whose ids are not whole.
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.usage_aggregates (tenant_id, customer_id, subscription_id, charge_id, period_start, \
                 group_key, dedup_written_at) VALUES ('acme', 'cus-1', '', 'torn-1', 0, '', toTimestamp(now()))"
            ),
            (),
        )
        .await
        .unwrap();
    let mut short = encode_block(&[IdHash::of("torn-id")]);
    short.truncate(9);
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.usage_aggregates (tenant_id, customer_id, subscription_id, charge_id, period_start, \
                 group_key, dedup_ids, dedup_written_at) VALUES ('acme', 'cus-1', '', 'torn-2', 0, '', ?, toTimestamp(now()))"
            ),
            (short,),
        )
        .await
        .unwrap();

    let ids: Vec<IdHash> = (0..8)
        .map(|i| IdHash::of(&format!("acme-1-{i}")))
        .chain([IdHash::of("torn-id")])
        .collect();
    let mut loaded = store
        .load_many(&[("acme", "cus-1"), ("acme", "cus-2")])
        .await
        .unwrap();
    let one = comparable(store.load("acme", "cus-1").await.unwrap(), &ids);
    let (aggregates, known, window, seen) = comparable(
        loaded
            .remove(&("acme".to_owned(), "cus-1".to_owned()))
            .unwrap(),
        &ids,
    );
    assert_eq!(aggregates.len(), 2, "both aggregates");
    assert_eq!(known[..7], [true; 7], "the ids of both whole blocks");
    assert!(!known[7] && !known[8], "nothing else");
    assert_eq!(seen, 7);
    assert_eq!(
        window.as_ref().map(|w| (w.from, w.to)),
        Some((11, 14)),
        "the window"
    );
    assert_eq!(one, (aggregates, known, window, seen), "the same alone");
    assert!(loaded.contains_key(&("acme".to_owned(), "cus-2".to_owned())));
    env.cleanup().await;
}
