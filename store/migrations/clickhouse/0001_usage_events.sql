-- Every accepted usage event, for analysts, with its rated amount. Written by rating only. A replay after a
-- crash may insert an event again; ReplacingMergeTree collapses rows with the same key, and reports use FINAL or
-- uniqExact(event_id). ingested_at is the Kafka append time, so a replay writes an identical row.
CREATE TABLE IF NOT EXISTS {database}.usage_events (
    tenant_id       String,
    event_id        String,
    customer_id     String,
    subscription_id String,
    metric_code     String,
    timestamp       DateTime('UTC'),
    ingested_at     DateTime('UTC'),
    value           Decimal(38, 9),
    amount          Decimal(38, 9),
    currency        String,
    properties      String,
    kafka_partition UInt16,
    kafka_offset    UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (tenant_id, customer_id, event_id);
