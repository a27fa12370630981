//! Publishing catalog, lifecycle and payment events, the way the API, the services, the demo, the benchmarks and
//! the tests all do it: keyed by the event's own key (`CatalogEvent::key`, `LifecycleEvent::key`,
//! tenant/customer for payments), with the `content-type` header of the chosen encoding, through the idempotent
//! `acks=all` producer.

use std::time::Duration;

use billing_schemas::catalog::CatalogEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use billing_schemas::payment::PaymentEvent;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::kafka::{self, Topics};

/// How long [`ack`] waits for a broker acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer bound to the reference topics.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topics: Topics,
}

impl Publisher {
    /// A publisher with its own producer.
    pub fn new(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        Ok(Publisher {
            producer: kafka::producer(kafka)?,
            topics: Topics::new(kafka),
        })
    }

    /// A publisher over an existing producer (cheap: a producer is shared, not copied).
    pub fn with_producer(producer: FutureProducer, topics: Topics) -> Self {
        Publisher { producer, topics }
    }

    /// Enqueue a catalog event; the future resolves when the broker acknowledged it.
    pub fn send_catalog(&self, ev: &CatalogEvent, enc: Encoding) -> anyhow::Result<DeliveryFuture> {
        self.send(&self.topics.catalog, &ev.key(), &encode(ev, enc)?, enc)
    }

    /// Enqueue a lifecycle event; the future resolves when the broker acknowledged it.
    pub fn send_lifecycle(
        &self,
        ev: &LifecycleEvent,
        enc: Encoding,
    ) -> anyhow::Result<DeliveryFuture> {
        self.send(&self.topics.lifecycle, &ev.key(), &encode(ev, enc)?, enc)
    }

    /// Enqueue a lifecycle event to one partition (clock ticks go to every partition, whatever their key).
    pub fn send_lifecycle_to(
        &self,
        ev: &LifecycleEvent,
        enc: Encoding,
        partition: i32,
    ) -> anyhow::Result<DeliveryFuture> {
        self.send_to(
            &self.topics.lifecycle,
            &ev.key(),
            &encode(ev, enc)?,
            enc,
            Some(partition),
        )
    }

    /// Publish a lifecycle event and return where it landed (partition, offset), once acknowledged.
    pub async fn lifecycle_at(
        &self,
        ev: &LifecycleEvent,
        enc: Encoding,
    ) -> anyhow::Result<(i32, i64)> {
        ack_at(self.send_lifecycle(ev, enc)?).await
    }

    /// Publish a catalog event and return where it landed (partition, offset), once acknowledged.
    pub async fn catalog_at(&self, ev: &CatalogEvent, enc: Encoding) -> anyhow::Result<(i32, i64)> {
        ack_at(self.send_catalog(ev, enc)?).await
    }

    /// Publish a clock tick to every partition of the lifecycle topic; returns where each landed.
    pub async fn tick_everywhere(
        &self,
        ev: &LifecycleEvent,
        enc: Encoding,
        partitions: i32,
    ) -> anyhow::Result<Vec<(i32, i64)>> {
        let sends: Vec<DeliveryFuture> = (0..partitions)
            .map(|p| self.send_lifecycle_to(ev, enc, p))
            .collect::<anyhow::Result<_>>()?;
        let mut out = Vec::with_capacity(sends.len());
        for d in sends {
            out.push(ack_at(d).await?);
        }
        Ok(out)
    }

    /// Enqueue a payment event (keyed by tenant/customer); the future resolves when the broker acknowledged it.
    pub fn send_payment(&self, ev: &PaymentEvent, enc: Encoding) -> anyhow::Result<DeliveryFuture> {
        let key = customer_key(&ev.tenant_id, ev.customer_id());
        self.send(&self.topics.payments, &key, &encode(ev, enc)?, enc)
    }

    /// Publish a payment event and return where it landed (partition, offset), once acknowledged.
    pub async fn payment_at(&self, ev: &PaymentEvent, enc: Encoding) -> anyhow::Result<(i32, i64)> {
        ack_at(self.send_payment(ev, enc)?).await
    }

    /// The topics this publisher writes to.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publish a catalog event and wait for the broker's acknowledgement.
    pub async fn catalog(&self, ev: &CatalogEvent, enc: Encoding) -> anyhow::Result<()> {
        ack(self.send_catalog(ev, enc)?).await
    }

    /// Publish a lifecycle event and wait for the broker's acknowledgement.
    pub async fn lifecycle(&self, ev: &LifecycleEvent, enc: Encoding) -> anyhow::Result<()> {
        ack(self.send_lifecycle(ev, enc)?).await
    }

    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        enc: Encoding,
    ) -> anyhow::Result<DeliveryFuture> {
        self.send_to(topic, key, payload, enc, None)
    }

    fn send_to(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        enc: Encoding,
        partition: Option<i32>,
    ) -> anyhow::Result<DeliveryFuture> {
        let headers = OwnedHeaders::new().insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(enc.content_type()),
        });
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic} failed: {e}"))
    }
}

/// Wait for a delivery, at most [`ACK_TIMEOUT`].
pub async fn ack(delivery: DeliveryFuture) -> anyhow::Result<()> {
    ack_at(delivery).await.map(|_| ())
}

/// Wait for a delivery, at most [`ACK_TIMEOUT`], and return its (partition, offset).
pub async fn ack_at(delivery: DeliveryFuture) -> anyhow::Result<(i32, i64)> {
    match tokio::time::timeout(ACK_TIMEOUT, delivery).await {
        Ok(Ok(Ok(d))) => Ok((d.partition, d.offset)),
        Ok(Ok(Err((e, _)))) => anyhow::bail!("delivery failed: {e}"),
        Ok(Err(_)) => anyhow::bail!("delivery was cancelled"),
        Err(_) => anyhow::bail!("no acknowledgement within {ACK_TIMEOUT:?}"),
    }
}
