//! The consume → validate → aggregate → checkpoint → commit loop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use billing_runtime::kafka::{self, dlq_headers, Topics};
use billing_runtime::{Settings, Shutdown};
use billing_schemas::CONTENT_TYPE_HEADER;

use crate::metrics::Metrics;
use crate::store::{Store, Total, TotalKey, UsageEventRow};
use crate::validate::{validate, Rejection};

/// Counts rebalances, so the loop knows when its cached totals may be stale.
struct RebalanceCounter(Arc<AtomicU64>);

impl ClientContext for RebalanceCounter {}

impl ConsumerContext for RebalanceCounter {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type DeliveryFuture = rdkafka::producer::DeliveryFuture;

/// Work applied in memory since the last checkpoint.
#[derive(Default)]
struct Pending {
    dirty: HashSet<TotalKey>,
    rows: Vec<UsageEventRow>,
    dead_letters: Vec<DeliveryFuture>,
    /// Next offset to commit per partition.
    offsets: HashMap<i32, i64>,
    messages: usize,
}

/// The rating consumer.
pub struct Pipeline {
    consumer: StreamConsumer<RebalanceCounter>,
    producer: FutureProducer,
    topics: Topics,
    store: Store,
    metrics: Metrics,
    rebalances: Arc<AtomicU64>,
    seen_rebalances: u64,
    totals: HashMap<TotalKey, Total>,
    pending: Pending,
    checkpoint_events: usize,
    checkpoint_interval: Duration,
}

impl Pipeline {
    /// Create the consumer (subscribed to `billing.usage`) and the dead-letter producer.
    pub fn new(settings: &Settings, store: Store, metrics: Metrics) -> anyhow::Result<Self> {
        let rebalances = Arc::new(AtomicU64::new(0));
        let consumer = kafka::consumer(
            &settings.kafka,
            &settings.rating.group_id,
            RebalanceCounter(rebalances.clone()),
        )?;
        let topics = Topics::new(&settings.kafka);
        consumer.subscribe(&[&topics.usage])?;
        Ok(Pipeline {
            consumer,
            producer: kafka::producer(&settings.kafka)?,
            topics,
            store,
            metrics,
            rebalances,
            seen_rebalances: 0,
            totals: HashMap::new(),
            pending: Pending::default(),
            checkpoint_events: settings.rating.checkpoint_events,
            checkpoint_interval: settings.rating.checkpoint_interval,
        })
    }

    /// Consume until shutdown, then checkpoint what is pending.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => self.checkpoint().await?,
                msg = self.consumer.recv() => {
                    match msg {
                        Ok(m) => {
                            let m = m.detach();
                            self.on_message(&m).await?;
                        }
                        Err(e) => tracing::warn!(error = %e, "consumer error"),
                    }
                    if self.pending.messages >= self.checkpoint_events {
                        self.checkpoint().await?;
                    }
                }
            }
        }
        self.checkpoint().await?;
        tracing::info!("rating stopped after a final checkpoint");
        Ok(())
    }

    async fn on_message(&mut self, m: &rdkafka::message::OwnedMessage) -> anyhow::Result<()> {
        // After a rebalance a partition may have had another owner: write out what we have (writes are stamped,
        // so stale ones lose) and forget cached totals, which are reloaded from the store on next use.
        let generation = self.rebalances.load(Ordering::SeqCst);
        if generation != self.seen_rebalances {
            self.checkpoint().await?;
            self.totals.clear();
            self.seen_rebalances = generation;
        }
        let (partition, offset) = (m.partition(), m.offset());
        self.pending.offsets.insert(partition, offset + 1);
        self.pending.messages += 1;
        let content_type = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER))
                .and_then(|h| h.value)
        });
        let valid = match validate(m.key(), m.payload().unwrap_or_default(), content_type) {
            Ok(v) => v,
            Err(reason) => {
                self.dead_letter(m, &reason);
                return Ok(());
            }
        };
        let ev = valid.event;
        let period_start = month_start(ev.timestamp);
        let key = TotalKey {
            tenant_id: ev.tenant_id.clone(),
            customer_id: ev.customer_id.clone(),
            metric_code: ev.metric_code.clone(),
            period_start,
        };
        if !self.totals.contains_key(&key) {
            let loaded = self.store.load(&key).await?;
            let fresh = Total {
                event_count: 0,
                value_sum: rust_decimal::Decimal::ZERO,
                last_partition: partition,
                last_offset: -1,
            };
            self.totals.insert(key.clone(), loaded.unwrap_or(fresh));
        }
        let total = self.totals.get_mut(&key).expect("just inserted");
        if total.last_partition == partition && offset <= total.last_offset {
            self.metrics.events.with_label_values(&["replayed"]).inc();
            return Ok(());
        }
        total.event_count += 1;
        total.value_sum += valid.value;
        total.last_partition = partition;
        total.last_offset = offset;
        self.pending.dirty.insert(key);
        let ingested_at = m
            .timestamp()
            .to_millis()
            .unwrap_or(ev.timestamp.timestamp_millis());
        self.pending.rows.push(UsageEventRow {
            tenant_id: ev.tenant_id,
            event_id: ev.event_id,
            customer_id: ev.customer_id,
            metric_code: ev.metric_code,
            timestamp: epoch_seconds(ev.timestamp.timestamp()),
            ingested_at: epoch_seconds(ingested_at / 1000),
            value: billing_runtime::clickhouse::to_decimal_38_9(valid.value),
            properties: serde_json::to_string(&ev.properties)?,
            kafka_partition: u16::try_from(partition).unwrap_or(u16::MAX),
            kafka_offset: u64::try_from(offset).unwrap_or_default(),
        });
        self.metrics.events.with_label_values(&["accepted"]).inc();
        Ok(())
    }

    fn dead_letter(&mut self, m: &rdkafka::message::OwnedMessage, reason: &Rejection) {
        tracing::debug!(partition = m.partition(), offset = m.offset(), %reason, "dead-lettering usage event");
        let reason = reason.to_string();
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: dlq_headers::REASON,
                value: Some(reason.as_str()),
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
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topics.usage_dlq).headers(headers);
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => self.pending.dead_letters.push(delivery),
            Err((e, _)) => {
                tracing::error!(error = %e, "dead-letter enqueue failed; the event will be replayed")
            }
        }
        self.metrics.events.with_label_values(&["rejected"]).inc();
    }

    /// Make everything applied so far durable, then commit the offsets it covers.
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        if self.pending.messages == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        for delivery in pending.dead_letters {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("dead-letter delivery failed: {e}"),
                Err(_) => anyhow::bail!("dead-letter delivery was cancelled"),
            }
        }
        self.store.insert_events(&pending.rows).await?;
        let totals: Vec<(TotalKey, Total)> = pending
            .dirty
            .into_iter()
            .filter_map(|k| self.totals.get(&k).cloned().map(|t| (k, t)))
            .collect();
        self.store.save(totals).await?;
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in &pending.offsets {
            tpl.add_partition_offset(&self.topics.usage, *partition, Offset::Offset(*next))?;
        }
        // Offsets are a resume hint: a failed commit (e.g. for a partition just revoked) only means a replay,
        // which the per-row offsets make harmless.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed");
        }
        self.metrics.checkpoints.inc();
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .expect("first of month at midnight UTC exists")
}

fn epoch_seconds(s: i64) -> u32 {
    u32::try_from(s).unwrap_or(if s < 0 { 0 } else { u32::MAX })
}
