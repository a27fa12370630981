//! Kafka: topic names, topic creation, and producer/consumer builders with the project's delivery settings.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// The project's topics, with the configured prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Usage events.
    pub usage: String,
    /// Rejected usage events, with the reason in headers.
    pub usage_dlq: String,
    /// Lifecycle events the invoicer could not apply, with the reason in headers.
    pub lifecycle_dlq: String,
    /// Customer and subscription lifecycle, clock ticks.
    pub lifecycle: String,
    /// Metrics and plans (compacted).
    pub catalog: String,
    /// Invoice events.
    pub invoices: String,
    /// Payment events.
    pub payments: String,
}

impl Topics {
    /// Topic names for a config.
    pub fn new(cfg: &KafkaConfig) -> Self {
        let p = &cfg.topic_prefix;
        Topics {
            usage: format!("{p}billing.usage"),
            usage_dlq: format!("{p}billing.usage.dlq"),
            lifecycle_dlq: format!("{p}billing.lifecycle.dlq"),
            lifecycle: format!("{p}billing.lifecycle"),
            catalog: format!("{p}billing.catalog"),
            invoices: format!("{p}billing.invoices"),
            payments: format!("{p}billing.payments"),
        }
    }

    /// (name, compacted) for every topic.
    pub fn all(&self) -> [(&str, bool); 7] {
        [
            (&self.usage, false),
            (&self.usage_dlq, false),
            (&self.lifecycle_dlq, false),
            (&self.lifecycle, false),
            (&self.catalog, true),
            (&self.invoices, false),
            (&self.payments, false),
        ]
    }
}

/// Dead-letter headers: why a message was rejected and where it came from.
pub mod dlq_headers {
    /// Human-readable rejection reason.
    pub const REASON: &str = "dlq.reason";
    /// Source topic.
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    /// Source partition.
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    /// Source offset.
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    /// Size in bytes of the original payload, when the dead letter carries only its beginning.
    pub const ORIGINAL_SIZE: &str = "dlq.original.size";
    /// Hex SHA-256 of the original payload, when the dead letter carries only its beginning.
    pub const ORIGINAL_SHA256: &str = "dlq.original.sha256";
}

fn base(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    // A request goes out at once rather than after the broker's ACK of the one before (Nagle's algorithm): rating's
    // fetches, dead letters and commits share connections, and a small one would wait for a delayed ACK.
    c.set("socket.nagle.disable", "true");
    c
}

/// The value of a message's `content-type` header (any case), which chooses its decoding.
pub fn content_type<M: rdkafka::message::Message>(m: &M) -> Option<&[u8]> {
    use rdkafka::message::Headers;
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| {
                h.key
                    .eq_ignore_ascii_case(billing_schemas::CONTENT_TYPE_HEADER)
            })
            .and_then(|h| h.value)
    })
}

/// The partitioner every producer of per-customer topics must use: murmur2 of the key, as the Java client's
/// default partitioner (librdkafka's `murmur2_random`, kcat `-X partitioner=murmur2_random`). Rating
/// dead-letters a record found on another partition than [`partition_for_key`] gives (`wrong_partition`).
pub const PARTITIONER: &str = "murmur2_random";

/// Kafka's murmur2 hash of a key (the Java client's `Utils.murmur2`, seed `0x9747b28c`).
pub fn murmur2(key: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (key.len() as u32);
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition a keyed record belongs to under [`PARTITIONER`]: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Largest payload copied to a dead-letter topic: a bigger one is cut there, and its full size and SHA-256 go in
/// headers, so a record too large for the producer never stops a partition.
pub const DLQ_MAX_PAYLOAD: usize = 256 * 1024;

/// The dead-letter record of a message: its key, its payload (cut at [`DLQ_MAX_PAYLOAD`]), its headers, and
/// headers naming the reason and where it came from.
pub fn dead_letter_record<'a, M: rdkafka::message::Message>(
    m: &'a M,
    dlq_topic: &'a str,
    reason: &str,
) -> rdkafka::producer::FutureRecord<'a, [u8], [u8]> {
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: dlq_headers::REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: dlq_headers::SOURCE_TOPIC,
            value: Some(m.topic()),
        })
        .insert(Header {
            key: dlq_headers::SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: dlq_headers::SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    if let Some(original) = m.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let payload = m.payload().unwrap_or_default();
    if payload.len() > DLQ_MAX_PAYLOAD {
        use sha2::Digest;
        let size = payload.len().to_string();
        let digest = sha2::Sha256::digest(payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        headers = headers
            .insert(Header {
                key: dlq_headers::ORIGINAL_SIZE,
                value: Some(size.as_str()),
            })
            .insert(Header {
                key: dlq_headers::ORIGINAL_SHA256,
                value: Some(digest.as_str()),
            });
    }
    let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(dlq_topic).headers(headers);
    if m.payload().is_some() {
        record = record.payload(&payload[..payload.len().min(DLQ_MAX_PAYLOAD)]);
    }
    if let Some(k) = m.key() {
        record = record.key(k);
    }
    record
}

/// A producer that waits for all in-sync replicas, never duplicates on retry and partitions keys like the Java
/// client ([`PARTITIONER`]).
pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    base(cfg)
        .set("partitioner", PARTITIONER)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            cfg.message_timeout.as_millis().to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            cfg.producer_queue_messages.to_string(),
        )
        .create()
}

/// A consumer for partitions assigned by the caller: it never joins a group and never commits (`name` only names
/// it to the broker).
pub fn assigned_consumer(
    cfg: &KafkaConfig,
    name: &str,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    base(cfg)
        .set("group.id", name)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
}

/// A consumer with manual offset commits and `earliest` reset, so a new group never skips records.
pub fn consumer<C: ConsumerContext + 'static>(
    cfg: &KafkaConfig,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, rdkafka::error::KafkaError> {
    group_consumer(cfg, group_id, "cooperative-sticky", context)
}

/// A group consumer whose members own the same partition number of every topic they subscribe to (the range
/// assignor: all per-customer topics have the same partition count and key, so a member owns whole customers
/// across topics). Otherwise as [`consumer`].
pub fn co_partitioned_consumer<C: ConsumerContext + 'static>(
    cfg: &KafkaConfig,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, rdkafka::error::KafkaError> {
    group_consumer(cfg, group_id, "range", context)
}

fn group_consumer<C: ConsumerContext + 'static>(
    cfg: &KafkaConfig,
    group_id: &str,
    assignment: &str,
    context: C,
) -> Result<StreamConsumer<C>, rdkafka::error::KafkaError> {
    base(cfg)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", assignment)
        .set("fetch.min.bytes", cfg.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string())
        .create_with_context(context)
}

/// Records the partitions a rebalance takes away, for a loop that keeps per-partition state: it forgets them
/// before it handles another message (the callback runs inside `recv`, before messages of the new assignment are
/// returned). Use it as the consumer's context.
#[derive(Default, Clone)]
pub struct Revocations(std::sync::Arc<std::sync::Mutex<Vec<i32>>>);

impl Revocations {
    /// The partitions revoked since the last call.
    pub fn take(&self) -> Vec<i32> {
        std::mem::take(&mut *self.0.lock().expect("revocations lock"))
    }
}

impl rdkafka::client::ClientContext for Revocations {}

impl ConsumerContext for Revocations {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.0.lock().expect("revocations lock");
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

/// The earliest (`Offset::Beginning`) or the end (`Offset::End`: the high watermark, or the last stable offset for a
/// read-committed client) offset of each of `partitions`, asked in one request per broker, where
/// `fetch_watermarks` asks two per partition (a barrier over the usage and both reference topics was 36 round
/// trips, which the consumer loop waited for).
pub fn offsets_at<C: ConsumerContext, K: Consumer<C>>(
    client: &K,
    partitions: &[(&str, i32)],
    at: rdkafka::Offset,
    timeout: Duration,
) -> anyhow::Result<std::collections::HashMap<(String, i32), i64>> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition_offset(topic, *p, at)?;
    }
    let answer = client.offsets_for_times(tpl, timeout)?;
    answer
        .elements()
        .iter()
        .map(|e| {
            e.error()
                .map_err(|err| anyhow::anyhow!("{}/{}: {err}", e.topic(), e.partition()))?;
            match e.offset() {
                rdkafka::Offset::Offset(o) => Ok(((e.topic().to_owned(), e.partition()), o)),
                other => anyhow::bail!(
                    "{}/{}: no offset for {at:?} ({other:?})",
                    e.topic(),
                    e.partition()
                ),
            }
        })
        .collect()
}

/// Set `retention.ms` of these topics (an `AlterConfigs`: their other settings go back to the broker's defaults,
/// which is what the dead-letter topics are created with).
pub async fn set_retention(
    cfg: &KafkaConfig,
    topics: &[String],
    retention: Duration,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base(cfg).create()?;
    let ms = retention.as_millis().to_string();
    let changes: Vec<rdkafka::admin::AlterConfig<'_>> = topics
        .iter()
        .map(|t| {
            rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(t))
                .set("retention.ms", &ms)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.alter_configs(changes.iter(), &opts).await? {
        if let Err((resource, code)) = result {
            anyhow::bail!("setting retention.ms of {resource:?}: {code}");
        }
    }
    Ok(())
}

/// Create every topic that is missing. Existing topics are left as they are, so this is idempotent.
pub async fn ensure_topics(cfg: &KafkaConfig) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = base(cfg).create()?;
    let topics = Topics::new(cfg);
    let all = topics.all();
    let new: Vec<NewTopic> = all
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(
                name,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            );
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else if *name == topics.lifecycle
                || *name == topics.invoices
                || *name == topics.payments
            {
                // Logs folded from their start: customers and subscriptions (rating, the invoicer, payments),
                // invoices (their numbers, what payments collects) and payments (attempts and outcomes: a lost
                // outcome would be charged again). Keep them all.
                t.set("retention.ms", "-1")
            } else if *name == topics.usage {
                // Rating measures "too far in the future" against the time Kafka received the event, not a time
                // the producer chose.
                t.set("message.timestamp.type", "LogAppendTime")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(created)
}

/// Fetch cluster metadata: proves the brokers answer.
pub async fn ping(cfg: &KafkaConfig) -> Result<(), String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            base(&cfg).create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| format!("kafka: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values of the Java client's Utils.murmur2 (Kafka's UtilsTest); the stack test
    // `producers_partition_keys_like_the_java_client` checks the same function against librdkafka.
    #[test]
    fn murmur2_matches_the_java_client() {
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
