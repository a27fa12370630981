//! The reference topics' reader: every rating instance reads `billing.catalog` and `billing.lifecycle` whole
//! (they are small next to usage) with its own non-group consumer into [`Reference`], and a barrier makes usage
//! wait until everything produced to them before the barrier was taken has been applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use billing_runtime::kafka::Topics;
use billing_runtime::Shutdown;
use billing_schemas::catalog::CatalogEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use billing_schemas::reference::Reference;

/// Shared reference data plus how far the reader has read each partition.
#[derive(Clone, Default)]
pub struct SharedReference {
    /// The data.
    pub data: Arc<RwLock<Reference>>,
    /// Next offset to read per (topic, partition).
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl SharedReference {
    /// Read the catalog and lifecycle topics from the beginning until shutdown.
    pub fn spawn_reader(
        &self,
        kafka: &billing_runtime::config::KafkaConfig,
        topics: &Topics,
        shutdown: Shutdown,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        // A BaseConsumer polled on a blocking thread: with a StreamConsumer, messages fetched right after
        // `assign` could sit unnoticed until another message arrived, and reference topics are often quiet.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set(
                "group.id",
                format!("rating-reference-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            // If resolving "beginning" fails (e.g. a leader moves), fall back to the start too, never the end.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in [&topics.catalog, &topics.lifecycle] {
            for p in 0..kafka.partitions {
                // An explicit offset, not Offset::Beginning: the logical offset is resolved asynchronously and a
                // failed resolution silently falls back to auto.offset.reset.
                let (low, _) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            }
        }
        consumer.assign(&tpl)?;
        let (catalog_topic, this) = (topics.catalog.clone(), self.clone());
        Ok(tokio::task::spawn_blocking(move || {
            while !shutdown.is_cancelled() {
                let polled = consumer.poll(Duration::from_millis(100));
                let m = match polled {
                    None => {
                        // Caught up for now: take the consumer's own positions, which move past what is not a
                        // message (a transaction's commit marker, aborted records), so the barrier can see the end.
                        this.refresh_positions(&consumer);
                        continue;
                    }
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reference reader error");
                        continue;
                    }
                };
                let content_type = billing_runtime::kafka::content_type(&m);
                let payload = m.payload().unwrap_or_default();
                // Decoded before the lock is taken, so usage is rated meanwhile.
                let applied = if m.topic() == catalog_topic {
                    billing_schemas::decode::<CatalogEvent>(payload, content_type)
                        .map(|ev| this.data.write().expect("reference lock").apply_catalog(ev))
                } else {
                    billing_schemas::decode::<LifecycleEvent>(payload, content_type).map(|ev| {
                        this.data
                            .write()
                            .expect("reference lock")
                            .apply_lifecycle(ev)
                    })
                };
                match applied {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(topic = m.topic(), offset = m.offset(), error = %e, "reference event refused")
                    }
                    Err(e) => {
                        tracing::warn!(topic = m.topic(), offset = m.offset(), error = %e, "undecodable reference event skipped")
                    }
                }
                this.positions
                    .lock()
                    .expect("positions lock")
                    .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            }
        }))
    }

    fn refresh_positions(&self, consumer: &BaseConsumer) {
        let Ok(tpl) = consumer.position() else {
            return;
        };
        let mut positions = self.positions.lock().expect("positions lock");
        for e in tpl.elements() {
            if let Offset::Offset(next) = e.offset() {
                let at = positions
                    .entry((e.topic().to_owned(), e.partition()))
                    .or_insert(next);
                *at = (*at).max(next);
            }
        }
    }

    /// Wait until everything produced to the reference topics before this call has been applied.
    pub async fn catch_up(
        &self,
        client: &Arc<BaseConsumer>,
        partitions: i32,
        topics: &Topics,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (client, t) = (client.clone(), topics.clone());
        let targets: Vec<((String, i32), (i64, i64))> =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let mut out = Vec::new();
                for topic in [&t.catalog, &t.lifecycle] {
                    for p in 0..partitions {
                        let (low, high) =
                            client.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                        out.push(((topic.clone(), p), (low, high)));
                    }
                }
                Ok(out)
            })
            .await??;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let behind: Vec<String> = {
                let pos = self.positions.lock().expect("positions lock");
                targets
                    .iter()
                    .filter_map(|((topic, p), (low, high))| {
                        // A partition whose records all expired (low = high) has nothing to read.
                        let at = pos.get(&(topic.clone(), *p)).copied().unwrap_or(*low);
                        (at < *high).then(|| format!("{topic}/{p} at {at} of {high}"))
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "reference topics not caught up in {timeout:?}: {}",
                behind.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
