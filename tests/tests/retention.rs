//! Data retention on the real stores: `billing_store::retention::run` (what `billing retention run` and the ticker
//! call) drops the raw usage events of the months wholly older than `retention.usage_events` and nothing else
//! (invoices of the same months stay), sets the dead-letter topics' `retention.ms` and the webhook delivery logs'
//! CQL default TTL, and a second run changes nothing more.

use std::time::Duration;

use billing_store::usage_events::UsageEventRow;
use billing_tests::TestEnv;
use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn row(id: &str, at: &str) -> UsageEventRow {
    let t: DateTime<Utc> = at.parse().unwrap();
    UsageEventRow {
        tenant_id: "acme".into(),
        event_id: id.into(),
        customer_id: "c1".into(),
        subscription_id: "s1".into(),
        metric_code: "calls".into(),
        timestamp: t.timestamp() as u32,
        ingested_at: t.timestamp() as u32,
        value: 1_000_000_000,
        amount: 0,
        currency: "EUR".into(),
        properties: "{}".into(),
        kafka_partition: 0,
        kafka_offset: 0,
        unpriced: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_usage_partitions_only_and_sets_topic_and_table_limits() {
    let mut env = TestEnv::new("retention").await;
    env.settings.retention.usage_events = Duration::from_secs(365 * 86_400);
    env.settings.retention.dead_letters = Duration::from_secs(7 * 86_400);
    env.settings.retention.webhook_deliveries = Duration::from_secs(14 * 86_400);
    let ch = env.clickhouse();
    let mut rows = billing_store::usage_events::EncodedRows::default();
    for r in [
        row("old-1", "2024-01-15T00:00:00Z"),
        row("old-2", "2025-06-15T00:00:00Z"),
        row("edge", "2025-12-31T23:59:59Z"),
        row("recent", "2026-11-15T00:00:00Z"),
    ] {
        rows.push(&r);
    }
    billing_store::usage_events::insert_encoded(&ch, &rows)
        .await
        .unwrap();
    ch.query(
        "INSERT INTO invoices (tenant_id, invoice_id, billing_date) VALUES \
         ('acme', 'inv_2024', '2024-01-01 00:00:00')",
    )
    .execute()
    .await
    .unwrap();

    // On 2026-12-10 with 365 days: the cutoff is 2025-12-10, so every month before December 2025 goes.
    let now: DateTime<Utc> = "2026-12-10T00:00:00Z".parse().unwrap();
    let report = billing_store::retention::run(&env.settings, now)
        .await
        .unwrap();
    assert_eq!(
        report.dropped,
        vec![
            ("usage_events".to_owned(), 202401),
            ("usage_events".to_owned(), 202506)
        ]
    );
    let left: Vec<String> = ch
        .query("SELECT event_id FROM usage_events ORDER BY event_id")
        .fetch_all::<String>()
        .await
        .unwrap();
    assert_eq!(left, vec!["edge".to_owned(), "recent".to_owned()]);
    let invoices: u64 = ch
        .query("SELECT count() FROM invoices")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(invoices, 1, "invoices are never deleted");

    // The dead-letter topics keep 7 days.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for topic in [&env.topics.usage_dlq, &env.topics.lifecycle_dlq] {
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .unwrap();
        let resource = described.into_iter().next().unwrap().unwrap();
        let ms = resource
            .get("retention.ms")
            .and_then(|e| e.value.clone())
            .unwrap();
        assert_eq!(ms, (7 * 86_400_000u64).to_string(), "{topic}");
    }
    // The webhook delivery logs' TTL is 14 days.
    let session = billing_runtime::cql::connect(&env.settings.cassandra)
        .await
        .unwrap();
    for table in billing_store::retention::CQL_TABLES {
        let (ttl,): (i32,) = session
            .query_unpaged(
                "SELECT default_time_to_live FROM system_schema.tables \
                 WHERE keyspace_name = ? AND table_name = ?",
                (&env.settings.cassandra.keyspace, *table),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<(i32,)>()
            .unwrap();
        assert_eq!(ttl, 14 * 86_400, "{table}");
    }

    // Again: nothing more to drop.
    let again = billing_store::retention::run(&env.settings, now)
        .await
        .unwrap();
    assert!(again.dropped.is_empty(), "{again}");
    env.cleanup().await;
}
