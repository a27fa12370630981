//! The reference topics' reader: every rating instance reads `billing.catalog` and `billing.lifecycle` (all their
//! partitions: they are small next to usage) with its own non-group consumer into [`Reference`], and a barrier makes usage
//! wait until everything produced to them before the barrier was taken has been applied. One thread polls and
//! decodes, another folds, in batches under one write lock each: a restart's full read uses both cores. A start
//! from a snapshot of the lifecycle state ([`crate::snapshots`]) reads `billing.lifecycle` only from the positions
//! the snapshot reflects; the folder takes the next snapshot when one is due.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::Shutdown;
use billing_schemas::catalog::CatalogEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use billing_schemas::reference::Reference;

use crate::snapshots::{Loaded, Taker};
use crate::Metrics;

/// Events the poller gathers before handing them to the folder (fewer than this when nothing more is waiting).
const FOLD_BATCH: usize = 512;
/// Batches decoded ahead of the folder.
const FOLD_QUEUE: usize = 8;

/// A reference event read, decoded and not applied yet.
struct Read {
    catalog: bool,
    partition: i32,
    offset: i64,
    event: Result<Event, billing_schemas::DecodeError>,
}

enum Event {
    Catalog(CatalogEvent),
    Lifecycle(LifecycleEvent),
}

/// What the poller hands the folder, in offset order.
enum Batch {
    Events(Vec<Read>),
    /// The consumer's next offsets (catalog?, partition, offset) once nothing was waiting.
    Positions(Vec<(bool, i32, i64)>),
}

/// Each lifecycle partition's end offset now.
pub fn lifecycle_ends(
    kafka: &billing_runtime::config::KafkaConfig,
    topics: &Topics,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()?;
    let named: Vec<(&str, i32)> = (0..kafka.partitions)
        .map(|p| (topics.lifecycle.as_str(), p))
        .collect();
    let ends = kafka::offsets_at(&consumer, &named, Offset::End, Duration::from_secs(10))?;
    Ok(ends.into_iter().map(|((_, p), end)| (p, end)).collect())
}

/// Shared reference data plus how far the reader has read each partition.
#[derive(Clone, Default)]
pub struct SharedReference {
    /// The data.
    pub data: Arc<RwLock<Reference>>,
    /// Next offset to read per (topic, partition).
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl SharedReference {
    /// Rating's reference state: only what attribution needs (see [`Reference::for_attribution`]).
    pub fn for_attribution() -> Self {
        SharedReference {
            data: Arc::new(RwLock::new(Reference::for_attribution())),
            positions: Arc::default(),
        }
    }

    /// Read the catalog topic from its beginning, and the lifecycle topic from the positions `snapshot` reflects
    /// (its state restored first) or from its beginning, until shutdown; `taker` takes the next snapshots.
    pub fn spawn_reader(
        &self,
        kafka: &billing_runtime::config::KafkaConfig,
        topics: &Topics,
        snapshot: Option<Loaded>,
        taker: Option<Taker>,
        metrics: Metrics,
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
        let (mut lifecycle_starts, mut lifecycle_ends) = (BTreeMap::new(), BTreeMap::new());
        let mut tpl = TopicPartitionList::new();
        for topic in [&topics.catalog, &topics.lifecycle] {
            for p in 0..kafka.partitions {
                // An explicit offset, not Offset::Beginning: the logical offset is resolved asynchronously and a
                // failed resolution silently falls back to auto.offset.reset.
                let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
                if topic == &topics.lifecycle {
                    lifecycle_starts.insert(p, low);
                    lifecycle_ends.insert(p, high);
                }
            }
        }
        if let Some(from) = snapshot.and_then(|s| self.restore(s)) {
            lifecycle_starts = from;
        }
        // Where each lifecycle partition is read from is its position until a message or the consumer moves it: a
        // snapshot needs every partition's, and one that stays empty has no other.
        for (p, at) in lifecycle_starts {
            tpl.set_partition_offset(&topics.lifecycle, p, Offset::Offset(at))?;
            self.positions
                .lock()
                .expect("positions lock")
                .insert((topics.lifecycle.clone(), p), at);
        }
        consumer.assign(&tpl)?;
        // Two threads, so a restart's full read uses both cores: this one polls and decodes, the folder applies
        // the decoded events in offset order and only then moves the positions the barrier compares.
        let (to_folder, batches) = std::sync::mpsc::sync_channel::<Batch>(FOLD_QUEUE);
        // The folder hands emptied buffers back: a fresh buffer per batch meant fresh pages, zeroed by the kernel,
        // for every 512 events.
        let (to_poller, spare) = std::sync::mpsc::sync_channel::<Vec<Read>>(FOLD_QUEUE + 1);
        let folder = {
            let this = self.clone();
            let catalog_topic = topics.catalog.clone();
            let lifecycle_topic = topics.lifecycle.clone();
            let (mut taker, ends) = (taker, lifecycle_ends.clone());
            let [catalog_events, lifecycle_events] =
                ["catalog", "lifecycle"].map(|t| metrics.reference_events.with_label_values(&[t]));
            std::thread::Builder::new()
                .name("reference-fold".into())
                .spawn(move || {
                    for batch in batches {
                        let caught_up = matches!(batch, Batch::Positions(_));
                        if let Batch::Events(events) = &batch {
                            let lifecycle = events.iter().filter(|r| !r.catalog).count() as u64;
                            lifecycle_events.inc_by(lifecycle);
                            catalog_events.inc_by(events.len() as u64 - lifecycle);
                            if let Some(t) = taker.as_mut() {
                                t.folded(lifecycle);
                            }
                        }
                        if let Some(emptied) = this.fold(batch, &catalog_topic, &lifecycle_topic) {
                            let _ = to_poller.try_send(emptied);
                        }
                        if let Some(t) = taker.as_mut().filter(|t| caught_up && t.due()) {
                            this.take_snapshot(t, &lifecycle_topic, &ends);
                        }
                    }
                })?
        };
        let catalog_topic = topics.catalog.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let buffer = || {
                spare
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(FOLD_BATCH))
            };
            let mut read = buffer();
            while !shutdown.is_cancelled() {
                // Wait for a message only when nothing is gathered: what is gathered goes to the folder as soon
                // as nothing more is waiting in the consumer.
                let wait = if read.is_empty() {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                let m = match consumer.poll(wait) {
                    None => {
                        let batch = if read.is_empty() {
                            // Caught up for now: the consumer's own positions, which move past what is not a
                            // message (a transaction's commit marker, aborted records), so the barrier can see
                            // the end.
                            match consumer.position() {
                                Ok(tpl) => Batch::Positions(
                                    tpl.elements()
                                        .iter()
                                        .filter_map(|e| match e.offset() {
                                            Offset::Offset(next) => Some((
                                                e.topic() == catalog_topic,
                                                e.partition(),
                                                next,
                                            )),
                                            _ => None,
                                        })
                                        .collect(),
                                ),
                                Err(_) => continue,
                            }
                        } else {
                            Batch::Events(std::mem::replace(&mut read, buffer()))
                        };
                        if to_folder.send(batch).is_err() {
                            break;
                        }
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
                let catalog = m.topic() == catalog_topic;
                read.push(Read {
                    catalog,
                    partition: m.partition(),
                    offset: m.offset(),
                    event: if catalog {
                        billing_schemas::decode::<CatalogEvent>(payload, content_type)
                            .map(Event::Catalog)
                    } else {
                        billing_schemas::decode::<LifecycleEvent>(payload, content_type)
                            .map(Event::Lifecycle)
                    },
                });
                if read.len() >= FOLD_BATCH
                    && to_folder
                        .send(Batch::Events(std::mem::replace(&mut read, buffer())))
                        .is_err()
                {
                    break;
                }
            }
            drop(to_folder);
            let _ = folder.join();
        }))
    }

    /// Restore the lifecycle state `snapshot` holds ([`crate::snapshots::Snapshots::newest`] chose one that fits
    /// the topic); returns the positions to read from.
    fn restore(&self, snapshot: Loaded) -> Option<BTreeMap<i32, i64>> {
        let head = snapshot.head;
        let started = std::time::Instant::now();
        let restored = self
            .data
            .write()
            .expect("reference lock")
            .restore_lifecycle_state(&snapshot.data);
        match restored {
            Ok(customers) => {
                tracing::info!(snapshot = %head.id, customers, seconds = started.elapsed().as_secs_f64(),
                    "reference state restored; reading billing.lifecycle from the snapshot's positions");
                Some(head.positions)
            }
            Err(e) => {
                tracing::warn!(snapshot = %head.id, error = %e,
                    "reference snapshot not restored; reading billing.lifecycle from its start");
                None
            }
        }
    }

    /// Take a snapshot of the lifecycle state as folded so far (the folder calls it between batches, so the state
    /// and the positions agree) and hand it to the writer; not before every lifecycle partition has been read up to
    /// `ends`, where it ended at the start (a reader that is only waiting for the next fetch of a long read would
    /// snapshot a fraction of it).
    fn take_snapshot(&self, taker: &mut Taker, lifecycle_topic: &str, ends: &BTreeMap<i32, i64>) {
        let positions: Option<BTreeMap<i32, i64>> = {
            let at = self.positions.lock().expect("positions lock");
            ends.iter()
                .map(|(p, end)| {
                    at.get(&(lifecycle_topic.to_owned(), *p))
                        .filter(|offset| *offset >= end)
                        .map(|offset| (*p, *offset))
                })
                .collect()
        };
        // Not every partition read to its end at the start yet: the next time.
        let Some(positions) = positions else {
            return;
        };
        let taken = {
            let data = self.data.read().expect("reference lock");
            data.encode_lifecycle_state()
                .map(|bytes| (data.customers().count(), bytes))
        };
        match taken {
            Ok((customers, bytes)) => taker.take(positions, customers, bytes),
            Err(e) => tracing::warn!(error = %e, "reference snapshot not taken"),
        }
    }

    /// Apply a batch under one write lock, then move the positions past it; returns the emptied buffer.
    fn fold(&self, batch: Batch, catalog_topic: &str, lifecycle_topic: &str) -> Option<Vec<Read>> {
        let topic = |catalog: bool| {
            if catalog {
                catalog_topic
            } else {
                lifecycle_topic
            }
        };
        let mut next: HashMap<(bool, i32), i64> = HashMap::new();
        let mut emptied = None;
        match batch {
            Batch::Positions(at) => {
                for (catalog, partition, offset) in at {
                    next.insert((catalog, partition), offset);
                }
            }
            Batch::Events(mut events) => {
                let mut refused = Vec::new();
                {
                    let mut data = self.data.write().expect("reference lock");
                    for r in events.drain(..) {
                        let applied = match r.event {
                            Ok(Event::Catalog(ev)) => data.apply_catalog(ev),
                            Ok(Event::Lifecycle(ev)) => data.apply_lifecycle(ev),
                            Err(e) => Err(format!("undecodable, skipped: {e}")),
                        };
                        if let Err(e) = applied {
                            refused.push((r.catalog, r.offset, e));
                        }
                        next.insert((r.catalog, r.partition), r.offset + 1);
                    }
                }
                for (catalog, offset, error) in refused {
                    tracing::warn!(topic = topic(catalog), offset, %error, "reference event refused");
                }
                emptied = Some(events);
            }
        }
        let mut positions = self.positions.lock().expect("positions lock");
        for ((catalog, partition), offset) in next {
            let at = positions
                .entry((topic(catalog).to_owned(), partition))
                .or_insert(offset);
            *at = (*at).max(offset);
        }
        emptied
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
                let named: Vec<(&str, i32)> = [&t.catalog, &t.lifecycle]
                    .into_iter()
                    .flat_map(|topic| (0..partitions).map(move |p| (topic.as_str(), p)))
                    .collect();
                let at = |at| kafka::offsets_at(&*client, &named, at, Duration::from_secs(5));
                let (low, high) = (at(Offset::Beginning)?, at(Offset::End)?);
                high.into_iter()
                    .map(|(tp, high)| {
                        let low = *low.get(&tp).context("no earliest offset")?;
                        Ok((tp, (low, high)))
                    })
                    .collect()
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
