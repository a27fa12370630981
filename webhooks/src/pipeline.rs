//! The dispatcher's loop: a group consumer on `billing.lifecycle`, `billing.invoices` and `billing.payments`.
//! A batch of messages is mapped to webhook events ([`crate::event`]), each event fanned out to the enabled
//! endpoints of its tenant that subscribe to its type, one delivery row per pair written to ScyllaDB (a lightweight
//! transaction on a deterministic id: a replay creates nothing twice), and only then are the batch's offsets
//! committed: at least once into the delivery table. The deliveries go to the [`Sender`]'s endpoint queues.
//!
//! Ownership follows the assignment: a delivery belongs to its event's partition (`<topic>/<partition>`). When a
//! partition is assigned, its pending deliveries are reloaded from `webhook_pending`, and its redeliver requests
//! are looked for every `redeliver_poll`; when it is revoked, they are left to the next owner.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_runtime::config::Settings;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::Shutdown;
use billing_schemas::invoice::InvoiceEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use billing_schemas::payment::PaymentEvent;
use billing_store::webhook_deliveries::{delivery_id, NewDelivery, WebhookDeliveries, PENDING};
use billing_store::webhook_endpoints::{WebhookEndpoint, WebhookEndpoints};
use billing_store::webhook_redeliveries::WebhookRedeliveries;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::event::{self, WebhookEvent};
use crate::metrics::Metrics;
use crate::sender::{Job, Sender};

/// Most messages handled in one batch.
const MAX_BATCH: usize = 500;
/// How long a batch waits for more messages once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// Delivery rows written at once.
const WRITE_CONCURRENCY: usize = 32;
/// An endpoint receives the events appended to Kafka after it was created, give or take this much clock skew
/// between the API and the producers: a new endpoint is not flooded with history (a new consumer group reads the
/// topics from their start).
const CREATED_SKEW: chrono::Duration = chrono::Duration::seconds(60);
/// Redeliver requests are read again this far back (two API instances may file them slightly out of order).
const REDELIVER_OVERLAP: chrono::Duration = chrono::Duration::seconds(30);
/// How far back a newly owned partition's redeliver requests are read (the table's TTL).
const REDELIVER_KEPT: chrono::Duration = chrono::Duration::days(7);

/// Partitions assigned and revoked by rebalances, for the loop to act on (the callbacks run inside `recv`).
#[derive(Default, Clone)]
pub struct Assignments(Arc<Mutex<Vec<(bool, String)>>>);

fn sources(tpl: &TopicPartitionList) -> impl Iterator<Item = String> + '_ {
    tpl.elements()
        .into_iter()
        .map(|e| source(e.topic(), e.partition()))
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut changes = self.0.lock().expect("assignments lock");
            changes.extend(sources(tpl).map(|s| (false, s)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut changes = self.0.lock().expect("assignments lock");
            changes.extend(sources(tpl).map(|s| (true, s)));
        }
    }
}

/// The owner name of a partition: `<topic>/<partition>`.
pub fn source(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The dispatcher.
pub struct Pipeline {
    topics: Topics,
    consumer: StreamConsumer<Assignments>,
    assignments: Assignments,
    endpoints: Arc<WebhookEndpoints>,
    deliveries: Arc<WebhookDeliveries>,
    redeliveries: Arc<WebhookRedeliveries>,
    sender: Sender,
    metrics: Metrics,
    redeliver_poll: Duration,
}

/// A source event mapped to its webhook event, with where it came from.
struct Mapped {
    source: String,
    appended_at: DateTime<Utc>,
    event: WebhookEvent,
}

impl Pipeline {
    /// Subscribe the group consumer.
    pub fn new(
        settings: &Settings,
        endpoints: Arc<WebhookEndpoints>,
        deliveries: Arc<WebhookDeliveries>,
        redeliveries: Arc<WebhookRedeliveries>,
        sender: Sender,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let assignments = Assignments::default();
        let consumer = kafka::consumer(
            &settings.kafka,
            &settings.webhooks.group_id,
            assignments.clone(),
        )?;
        consumer.subscribe(&[&topics.lifecycle, &topics.invoices, &topics.payments])?;
        Ok(Pipeline {
            topics,
            consumer,
            assignments,
            endpoints,
            deliveries,
            redeliveries,
            sender,
            metrics,
            redeliver_poll: settings.webhooks.redeliver_poll,
        })
    }

    /// Consume until shutdown.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let poller = tokio::spawn(poll_redeliveries(
            self.sender.clone(),
            self.deliveries.clone(),
            self.endpoints.clone(),
            self.redeliveries.clone(),
            self.redeliver_poll,
            shutdown.clone(),
        ));
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    self.apply_assignments();
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            self.apply_assignments();
            let mut batch = match first {
                Ok(m) => vec![m.detach()],
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    continue;
                }
            };
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(BATCH_WAIT, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.apply_assignments();
            if !self.handle(batch, &shutdown).await {
                break;
            }
        }
        let _ = poller.await;
        self.sender.stopped().await;
        Ok(())
    }

    /// Own the assigned partitions (and reload their pending deliveries), drop the revoked ones.
    fn apply_assignments(&self) {
        let changes = std::mem::take(&mut *self.assignments.0.lock().expect("assignments lock"));
        for (assigned, source) in changes {
            if !assigned {
                tracing::info!(source, "partition revoked");
                self.sender.disown(&source);
                continue;
            }
            self.sender.own(&source);
            let sender = self.sender.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(200);
                while sender.owns(&source) {
                    match sender.load(&source).await {
                        Ok(n) => {
                            tracing::info!(source, pending = n, "partition assigned");
                            return;
                        }
                        Err(e) => {
                            metrics.store_retries.inc();
                            tracing::warn!(source, error = %e, "reloading pending deliveries failed; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            });
        }
    }

    /// Map, fan out, write, commit, queue. `false` when shutdown interrupted it (nothing is committed then).
    async fn handle(&self, batch: Vec<OwnedMessage>, shutdown: &Shutdown) -> bool {
        let mut mapped = Vec::new();
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        for m in &batch {
            let at = offsets
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(m.offset());
            *at = (*at).max(m.offset());
            let outcome = match self.map(m) {
                Ok(Some(event)) => {
                    let appended_at = m
                        .timestamp()
                        .to_millis()
                        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                        .unwrap_or_else(Utc::now);
                    mapped.push(Mapped {
                        source: source(m.topic(), m.partition()),
                        appended_at,
                        event,
                    });
                    "mapped"
                }
                Ok(None) => "skipped",
                Err(e) => {
                    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e,
                        "not a datum of the topic's schema; no webhook event");
                    "undecodable"
                }
            };
            self.metrics
                .source_events
                .with_label_values(&[outcome])
                .inc();
        }
        let Some(endpoints) = self.endpoints_of(&mapped, shutdown).await else {
            return false;
        };
        let now = Utc::now();
        let new: Vec<NewDelivery> = mapped
            .iter()
            .flat_map(|m| {
                endpoints
                    .get(&m.event.tenant_id)
                    .into_iter()
                    .flatten()
                    .filter(|e| {
                        e.enabled
                            && e.subscribes_to(m.event.event_type)
                            && m.appended_at >= e.created_at - CREATED_SKEW
                    })
                    .map(move |e| NewDelivery {
                        tenant_id: e.tenant_id.clone(),
                        endpoint_id: e.endpoint_id.clone(),
                        delivery_id: delivery_id(&e.endpoint_id, &m.event.id),
                        source: m.source.clone(),
                        event_id: m.event.id.clone(),
                        event_type: m.event.event_type.to_owned(),
                        payload: m.event.body(),
                        created_at: m.appended_at,
                        first_attempt_at: now,
                    })
            })
            .collect();
        let created: Vec<Option<Job>> = futures::stream::iter(new)
            .map(|d| self.create(d, shutdown))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        if shutdown.is_cancelled() {
            return false;
        }
        self.commit(offsets);
        for job in created.into_iter().flatten() {
            if self.sender.owns(&job.source) {
                self.sender.enqueue(job);
            }
        }
        true
    }

    fn map(&self, m: &OwnedMessage) -> Result<Option<WebhookEvent>, billing_schemas::DecodeError> {
        let (payload, ct) = (m.payload().unwrap_or_default(), kafka::content_type(m));
        let topic = m.topic();
        Ok(if topic == self.topics.lifecycle {
            event::from_lifecycle(&billing_schemas::decode::<LifecycleEvent>(payload, ct)?)
        } else if topic == self.topics.invoices {
            event::from_invoice(&billing_schemas::decode::<InvoiceEvent>(payload, ct)?)
        } else {
            event::from_payment(&billing_schemas::decode::<PaymentEvent>(payload, ct)?)
        })
    }

    /// The endpoints of every tenant in the batch, read once each (retried until shutdown).
    async fn endpoints_of(
        &self,
        mapped: &[Mapped],
        shutdown: &Shutdown,
    ) -> Option<HashMap<String, Vec<WebhookEndpoint>>> {
        let tenants: HashSet<&str> = mapped.iter().map(|m| m.event.tenant_id.as_str()).collect();
        let mut out = HashMap::new();
        for tenant in tenants {
            let list = retry(shutdown, &self.metrics, "reading endpoints", || {
                self.endpoints.of_tenant(tenant)
            })
            .await?;
            out.insert(tenant.to_owned(), list);
        }
        Some(out)
    }

    /// Write one delivery (retried until shutdown); the job to queue when it is pending.
    async fn create(&self, d: NewDelivery, shutdown: &Shutdown) -> Option<Job> {
        let (stored, created) = retry(shutdown, &self.metrics, "writing a delivery", || {
            self.deliveries.create(&d)
        })
        .await?;
        if created {
            self.metrics.deliveries.inc();
        }
        (stored.status == PENDING).then(|| Job {
            tenant_id: stored.tenant_id,
            endpoint_id: stored.endpoint_id,
            delivery_id: stored.delivery_id,
            source: stored.source,
            due: stored.next_attempt_at.unwrap_or_else(Utc::now),
        })
    }

    /// Commit the offsets after a batch, for the partitions still owned (a revoked one is its new owner's).
    fn commit(&self, offsets: HashMap<(String, i32), i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            if self.sender.owns(&source(&topic, partition)) {
                if let Err(e) =
                    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))
                {
                    tracing::warn!(error = %e, "offset not committed");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        // A lost commit only replays the batch, which creates nothing twice.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets failed; the batch will be read again");
        }
    }
}

/// Run a store operation until it succeeds, backing off from 200 ms to 10 s; `None` at shutdown.
async fn retry<T, F, Fut>(shutdown: &Shutdown, metrics: &Metrics, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut wait = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                metrics.store_retries.inc();
                tracing::warn!(error = %e, "{what} failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Look for redeliver requests of the owned partitions every `every`; each request is handled once (the
/// delivery's `redelivered_up_to` records it).
async fn poll_redeliveries(
    sender: Sender,
    deliveries: Arc<WebhookDeliveries>,
    endpoints: Arc<WebhookEndpoints>,
    redeliveries: Arc<WebhookRedeliveries>,
    every: Duration,
    shutdown: Shutdown,
) {
    // Per owned partition: the latest request time seen. Request ids handled recently.
    let mut seen: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut handled: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let owned: Vec<String> = seen
            .keys()
            .cloned()
            .chain(sender.sources())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for source in owned {
            if !sender.owns(&source) {
                seen.remove(&source);
                continue;
            }
            let from = seen
                .get(&source)
                .map(|t| *t - REDELIVER_OVERLAP)
                .unwrap_or_else(|| Utc::now() - REDELIVER_KEPT);
            let requests = match redeliveries.since(&source, from).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(source, error = %e, "reading redeliver requests failed");
                    continue;
                }
            };
            let mut latest = from;
            for r in requests {
                latest = latest.max(r.requested_at);
                if handled.contains_key(&r.request_id) {
                    continue;
                }
                match redeliver(&sender, &deliveries, &endpoints, &r).await {
                    Ok(()) => {
                        handled.insert(r.request_id.clone(), r.requested_at);
                    }
                    Err(e) => {
                        tracing::warn!(delivery = r.delivery_id, error = %e, "redeliver failed; retrying");
                        latest = latest.min(r.requested_at);
                    }
                }
            }
            seen.insert(source, latest);
        }
        let horizon = seen.values().min().copied().unwrap_or_else(Utc::now) - REDELIVER_OVERLAP * 2;
        handled.retain(|_, at| *at >= horizon);
    }
}

async fn redeliver(
    sender: &Sender,
    deliveries: &WebhookDeliveries,
    endpoints: &WebhookEndpoints,
    r: &billing_store::webhook_redeliveries::Redelivery,
) -> anyhow::Result<()> {
    let Some(d) = deliveries
        .get(&r.tenant_id, &r.endpoint_id, &r.delivery_id)
        .await?
    else {
        return Ok(());
    };
    if d.redelivered_up_to.is_some_and(|t| t >= r.requested_at) {
        return Ok(());
    }
    if endpoints.get(&r.tenant_id, &r.endpoint_id).await?.is_none() {
        return Ok(());
    }
    deliveries.requeue(&d, r.requested_at).await?;
    sender.enqueue(Job {
        tenant_id: d.tenant_id,
        endpoint_id: d.endpoint_id,
        delivery_id: d.delivery_id,
        source: d.source,
        due: Utc::now(),
    });
    Ok(())
}
