//! A cache of issued invoices as `GET /v1/invoices/{id}` answers them (the body with its payment, and its ETag), so
//! a client polling an invoice costs no store read.
//!
//! Only issued invoices (finalized or void) are kept: a draft changes without an event. An answer is at most
//! `query_api.invoice_cache_ttl` old, whatever happens; within that bound an entry is dropped as soon as
//! - an event about its customer appears on `billing.invoices`, `billing.payments` or `billing.lifecycle` (every
//!   change to an issued invoice or its payment publishes one there, keyed by the customer): a consumer of this
//!   instance reads those topics from their end, without a group, and marks the customer changed;
//! - a write through this instance by a key of its tenant is answered (the write has waited for its effect, so the
//!   next read through this instance sees it: read-your-writes holds on one instance).
//!
//! A change is recorded as the instant it was seen. An entry is served only if no change of its customer or tenant
//! was seen after its store read began, and no entry is filled while a change seen less than a TTL ago may not be in
//! the store yet (a writer may publish before it writes its row). Changes older than a TTL are forgotten: every entry
//! older than that has expired anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use billing_runtime::kafka::Topics;
use billing_runtime::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Most entries kept; past it, expired ones are dropped and, if it is still full, nothing more is added.
const CAPACITY: usize = 100_000;

/// One cached answer.
#[derive(Clone)]
pub struct Cached {
    /// The JSON body.
    pub body: Bytes,
    /// Its strong ETag, quoted.
    pub etag: String,
}

struct Entry {
    cached: Cached,
    /// The customer's key (`tenant/customer`).
    customer: String,
    tenant: String,
    /// When the store read that produced it began.
    read_at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    /// Customer key or tenant → when a change of it was last seen.
    changed: HashMap<String, Instant>,
    /// When `changed` was last emptied because it was full: a change of anyone, for fills.
    cleared_at: Option<Instant>,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct InvoiceCache {
    ttl: Duration,
    /// Whether the change consumer is reading (until then nothing is kept).
    live: Arc<AtomicBool>,
    inner: Arc<Mutex<Inner>>,
    /// `invoice_cache_lookups_total{result="hit"|"miss"}`.
    lookups: prometheus::IntCounterVec,
}

/// A tenant's entry in the change map (customer keys always contain a `/`, tenants never).
fn tenant_key(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

impl InvoiceCache {
    /// A cache whose answers are at most `ttl` old (`ttl` zero disables it), its lookups counted in `registry`.
    pub fn new(ttl: Duration, registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let lookups = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "invoice_cache_lookups_total",
                "GET /v1/invoices/{id} answers looked up in the cache, by result (hit or miss)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        Ok(InvoiceCache {
            ttl,
            live: Arc::new(AtomicBool::new(false)),
            inner: Arc::default(),
            lookups,
        })
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.live.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent (each update is one insert).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for the tenant's invoice, if one is fresh.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Cached> {
        let found = self.lookup(tenant, id);
        let result = if found.is_some() { "hit" } else { "miss" };
        self.lookups.with_label_values(&[result]).inc();
        found
    }

    fn lookup(&self, tenant: &str, id: &str) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        let inner = self.lock();
        let e = inner.entries.get(&(tenant.to_owned(), id.to_owned()))?;
        let fresh = e.read_at.elapsed() < self.ttl
            && !changed_since(&inner.changed, &e.customer, e.read_at)
            && !changed_since(&inner.changed, &tenant_key(&e.tenant), e.read_at);
        fresh.then(|| e.cached.clone())
    }

    /// Keeps an answer read from the store, the read having begun at `read_at`, unless a change may be missing
    /// from it.
    pub fn put(&self, tenant: &str, id: &str, customer: &str, read_at: Instant, cached: Cached) {
        if !self.enabled() || read_at.elapsed() >= self.ttl {
            return;
        }
        let customer = billing_schemas::customer_key(tenant, customer);
        let mut inner = self.lock();
        let recent = |k: &str| {
            inner
                .changed
                .get(k)
                .is_some_and(|at| *at >= read_at || at.elapsed() < self.ttl)
        };
        let cleared = inner
            .cleared_at
            .is_some_and(|at| at >= read_at || at.elapsed() < self.ttl);
        if cleared || recent(&customer) || recent(&tenant_key(tenant)) {
            return;
        }
        if inner.entries.len() >= CAPACITY {
            let ttl = self.ttl;
            inner.entries.retain(|_, e| e.read_at.elapsed() < ttl);
            if inner.entries.len() >= CAPACITY {
                return;
            }
        }
        inner.entries.insert(
            (tenant.to_owned(), id.to_owned()),
            Entry {
                cached,
                customer,
                tenant: tenant.to_owned(),
                read_at,
            },
        );
    }

    /// A change of the customer (`tenant/customer`, the topics' key) was seen.
    pub fn customer_changed(&self, customer_key: &str) {
        self.changed(customer_key.to_owned());
    }

    /// A write of the tenant through this instance was answered.
    pub fn tenant_changed(&self, tenant: &str) {
        self.changed(tenant_key(tenant));
    }

    fn changed(&self, key: String) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.changed.len() >= CAPACITY {
            let ttl = self.ttl;
            inner.changed.retain(|_, at| at.elapsed() < ttl);
            if inner.changed.len() >= CAPACITY {
                // Too many changes to track one by one: forget every entry instead, and fill none for a TTL.
                inner.changed.clear();
                inner.cleared_at = Some(Instant::now());
                inner.entries.clear();
            }
        }
        inner.changed.insert(key, Instant::now());
    }

    /// Reads the change topics from their end and marks each record's customer changed, until the process stops.
    /// The cache serves nothing before the consumer is assigned the topics' current ends.
    pub fn spawn_consumer(&self, settings: &Settings) -> anyhow::Result<()> {
        if self.ttl.is_zero() {
            return Ok(());
        }
        let topics = Topics::new(&settings.kafka);
        let topics = [topics.invoices, topics.payments, topics.lifecycle];
        let partitions = settings.kafka.partitions;
        let consumer = Arc::new(billing_runtime::kafka::assigned_consumer(
            &settings.kafka,
            "query-api.invoice-cache",
        )?);
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                let c = consumer.clone();
                let t = topics.clone();
                match tokio::task::spawn_blocking(move || assign_at_ends(&c, &t, partitions)).await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "invoice cache: change topics not readable yet")
                    }
                    Err(e) => tracing::warn!(error = %e, "invoice cache: assignment task failed"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::info!("invoice cache: reading changes, serving");
            cache.live.store(true, Ordering::Release);
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                            cache.customer_changed(key);
                        }
                    }
                    Err(e) => {
                        // Entries still expire within the TTL while changes cannot be read.
                        tracing::warn!(error = %e, "invoice cache: change topics not readable");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// Assigns every partition of the topics at its current end (its high watermark, so nothing after it is skipped).
fn assign_at_ends(
    consumer: &StreamConsumer,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(())
}

fn changed_since(changed: &HashMap<String, Instant>, key: &str, read_at: Instant) -> bool {
    changed.get(key).is_some_and(|at| *at >= read_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(s: &str) -> Cached {
        Cached {
            body: Bytes::from(s.to_owned()),
            etag: format!("\"{s}\""),
        }
    }

    fn live(ttl: Duration) -> InvoiceCache {
        let c = InvoiceCache::new(ttl, &prometheus::Registry::new()).unwrap();
        c.live.store(true, Ordering::Release);
        c
    }

    #[test]
    fn nothing_is_served_before_the_consumer_reads_or_with_a_zero_ttl() {
        let c = InvoiceCache::new(Duration::from_secs(5), &prometheus::Registry::new()).unwrap();
        c.put("t", "i", "c", Instant::now(), answer("a"));
        assert!(c.get("t", "i").is_none());
        let c = live(Duration::ZERO);
        c.put("t", "i", "c", Instant::now(), answer("a"));
        assert!(c.get("t", "i").is_none());
    }

    #[test]
    fn an_entry_is_served_until_its_customer_or_tenant_changes() {
        let c = live(Duration::from_secs(5));
        c.put("t", "i", "c", Instant::now(), answer("a"));
        c.put("t", "j", "d", Instant::now(), answer("b"));
        c.put("u", "i", "c", Instant::now(), answer("x"));
        assert_eq!(c.get("t", "i").unwrap().body, "a");
        assert_eq!(c.get("u", "i").unwrap().body, "x");
        c.customer_changed("t/c");
        assert!(c.get("t", "i").is_none(), "its customer changed");
        assert_eq!(c.get("t", "j").unwrap().body, "b", "another customer");
        assert_eq!(c.get("u", "i").unwrap().body, "x", "another tenant");
        c.tenant_changed("t");
        assert!(c.get("t", "j").is_none(), "a write of its tenant");
        assert_eq!(c.get("u", "i").unwrap().body, "x");
    }

    #[test]
    fn a_read_begun_before_a_change_or_soon_after_it_is_not_kept() {
        let c = live(Duration::from_millis(300));
        let before = Instant::now();
        c.customer_changed("t/c");
        // Begun before the change: may miss it.
        c.put("t", "i", "c", before, answer("old"));
        assert!(c.get("t", "i").is_none());
        // Begun after it, but the writer may not have written its row yet.
        c.put("t", "i", "c", Instant::now(), answer("maybe old"));
        assert!(c.get("t", "i").is_none());
        // A TTL later the change is surely in the store.
        std::thread::sleep(Duration::from_millis(320));
        c.put("t", "i", "c", Instant::now(), answer("new"));
        assert_eq!(c.get("t", "i").unwrap().body, "new");
    }

    #[test]
    fn too_many_changes_forget_everything_and_fill_nothing_for_a_ttl() {
        let c = live(Duration::from_millis(300));
        let before = Instant::now();
        c.put("t", "kept", "k", Instant::now(), answer("a"));
        for i in 0..CAPACITY {
            c.customer_changed(&format!("t/c{i}"));
        }
        // The next change finds the map full of recent changes: everything is forgotten.
        c.customer_changed("t/x");
        assert!(c.get("t", "kept").is_none());
        // A read begun before, or soon after, may miss a change no longer recorded.
        c.put("t", "i", "c", before, answer("old"));
        c.put("t", "i", "c", Instant::now(), answer("maybe old"));
        assert!(c.get("t", "i").is_none());
        std::thread::sleep(Duration::from_millis(320));
        c.put("t", "i", "c", Instant::now(), answer("new"));
        assert_eq!(c.get("t", "i").unwrap().body, "new");
    }

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let c = live(Duration::from_millis(100));
        c.put("t", "i", "c", Instant::now(), answer("a"));
        assert!(c.get("t", "i").is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.get("t", "i").is_none());
        // A read that took longer than the TTL is not kept.
        c.put(
            "t",
            "i",
            "c",
            Instant::now() - Duration::from_millis(150),
            answer("slow"),
        );
        assert!(c.get("t", "i").is_none());
    }
}
