//! The invoicer's loop: one group consumer on `billing.lifecycle` and a reader of the whole `billing.catalog`.
//!
//! State is the fold of the lifecycle partitions it owns ([`Reference`]), rebuilt at start by reading them from
//! their beginning: the group never commits offsets, so every assignment starts at the earliest offset, and a
//! partition already folded skips what it has applied. Effects are idempotent, so replaying them is harmless:
//! read models are upserts (skipped below the partition's materialized offset), invoices have deterministic ids
//! and a finalized invoice is never recomputed. While a partition replays its history, clock ticks only move the
//! clock; once it has caught up, the bill run runs for the latest time of each clock, then at every tick.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use billing_runtime::config::{NumberingScope, Settings};
use billing_runtime::kafka::{self, Topics};
use billing_runtime::Shutdown;
use billing_schemas::catalog::{Catalog, CatalogEvent};
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent};
use billing_schemas::reference::Reference;
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use billing_store::billing::{BillingStore, CatalogEntry};
use billing_store::catalog_entries;
use billing_store::invoice_numbers::format_number;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_store::usage::UsageStore;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::bill::{self, clock_of, Issued, WALL};
use crate::metrics::Metrics;
use crate::views;

/// How often pending read-model progress is recorded at least.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Per lifecycle partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// Next offset to apply.
    next: i64,
    /// End offset when the partition was first seen: below it, the partition is replaying history.
    replay_end: i64,
    /// Offsets below this are already in the read models.
    materialized: i64,
    /// Offsets below this are in the read models but `materialized_offsets` does not say so yet.
    pending: Option<i64>,
    /// Latest time of each (tenant, clock) seen on this partition.
    clocks: BTreeMap<(String, String), DateTime<Utc>>,
    caught_up: bool,
}

/// The invoicer.
pub struct Invoicer {
    settings: Settings,
    topics: Topics,
    store: Arc<BillingStore>,
    usage: UsageStore,
    ch: clickhouse::Client,
    producer: FutureProducer,
    lifecycle: StreamConsumer,
    catalog: BaseConsumer,
    /// Reads rating's committed offsets (its checkpoints) and the usage topic's end offsets.
    watermarks: BaseConsumer,
    reference: Reference,
    partitions: HashMap<i32, PartitionState>,
    issued: Issued,
    /// Numbers already given, read back from `billing.invoices` (they survive the tables being wiped).
    restored: HashMap<String, String>,
    metrics: Metrics,
}

impl Invoicer {
    /// Connect everything.
    pub async fn new(
        settings: Settings,
        store: Arc<BillingStore>,
        usage: UsageStore,
        ch: clickhouse::Client,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let lifecycle: StreamConsumer = kafka::consumer(
            &settings.kafka,
            &settings.invoicer.group_id,
            DefaultConsumerContext,
        )?;
        lifecycle.subscribe(&[&topics.lifecycle])?;
        let plain = |group: &str| -> anyhow::Result<BaseConsumer> {
            Ok(ClientConfig::new()
                .set("bootstrap.servers", &settings.kafka.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "20")
                .create()?)
        };
        let catalog = plain(&format!(
            "invoicer-catalog-{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        let watermarks = plain(&settings.rating.group_id)?;
        Ok(Invoicer {
            producer: kafka::producer(&settings.kafka)?,
            topics,
            store,
            usage,
            ch,
            lifecycle,
            catalog,
            watermarks,
            reference: Reference::default(),
            partitions: HashMap::new(),
            issued: Issued::default(),
            restored: HashMap::new(),
            metrics,
            settings,
        })
    }

    /// Run until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.restore_numbers().await?;
        self.assign_catalog()?;
        self.catalog_catch_up(&shutdown).await?;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = flush.tick() => {
                    self.drain_catalog().await?;
                    self.flush_progress().await?;
                }
                m = self.lifecycle.recv() => {
                    let m = match m {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "lifecycle consumer error");
                            continue;
                        }
                    };
                    self.handle(m).await?;
                }
            }
        }
        self.flush_progress().await?;
        Ok(())
    }

    // ---- numbers given before (from billing.invoices) ----

    async fn restore_numbers(&mut self) -> anyhow::Result<()> {
        let topic = self.topics.invoices.clone();
        let consumer = &self.catalog;
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in 0..self.settings.kafka.partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
                ends.insert(p, high);
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while !ends.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "billing.invoices not read to its end in 300 s"
            );
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                // Past the end (transaction markers are not messages): positions tell.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let Offset::Offset(at) = e.offset() {
                            if ends.get(&e.partition()).is_some_and(|end| at >= *end) {
                                ends.remove(&e.partition());
                            }
                        }
                    }
                }
                continue;
            };
            let m = m?;
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                ends.remove(&m.partition());
            }
            let Ok(ev) = billing_schemas::decode::<billing_schemas::invoice::InvoiceEvent>(
                m.payload().unwrap_or_default(),
                kafka::content_type(&m),
            ) else {
                continue;
            };
            if let billing_schemas::invoice::Invoice::InvoiceFinalized(f) = ev.payload {
                self.restored.insert(f.invoice_id, f.number);
            }
        }
        consumer.unassign()?;
        tracing::info!(
            invoices = self.restored.len(),
            "invoice numbers read back from billing.invoices"
        );
        Ok(())
    }

    // ---- catalog ----

    fn assign_catalog(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.settings.kafka.partitions {
            let (low, _) =
                self.catalog
                    .fetch_watermarks(&self.topics.catalog, p, Duration::from_secs(10))?;
            tpl.add_partition_offset(&self.topics.catalog, p, Offset::Offset(low))?;
        }
        self.catalog.assign(&tpl)?;
        Ok(())
    }

    /// Read the catalog up to its current end (a barrier: plans published before now are known after).
    async fn catalog_catch_up(&mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut ends = HashMap::new();
        for p in 0..self.settings.kafka.partitions {
            let (_, high) =
                self.catalog
                    .fetch_watermarks(&self.topics.catalog, p, Duration::from_secs(10))?;
            ends.insert(p, high);
        }
        loop {
            self.drain_catalog().await?;
            let pos = self.catalog.position()?;
            let behind = pos.elements().iter().any(|e| match e.offset() {
                Offset::Offset(at) => ends.get(&e.partition()).is_some_and(|end| at < *end),
                _ => ends.get(&e.partition()).is_some_and(|end| *end > 0),
            });
            if !behind || shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn drain_catalog(&mut self) -> anyhow::Result<()> {
        while let Some(m) = self.catalog.poll(Duration::ZERO) {
            let m = match m {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "catalog reader error");
                    break;
                }
            };
            let ev = match billing_schemas::decode::<CatalogEvent>(
                m.payload().unwrap_or_default(),
                kafka::content_type(&m),
            ) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %e, "undecodable catalog event skipped");
                    continue;
                }
            };
            let tenant = ev.tenant_id.clone();
            let entry = match &ev.payload {
                Catalog::BillableMetric(x) => Some((
                    catalog_entries::METRIC,
                    x.code.clone(),
                    serde_json::to_string(x)?,
                )),
                Catalog::Plan(x) => Some((
                    catalog_entries::PLAN,
                    x.code.clone(),
                    serde_json::to_string(x)?,
                )),
                Catalog::Deleted(_) => None,
            };
            let deleted = match &ev.payload {
                Catalog::Deleted(d) => Some((d.kind.clone(), d.code.clone())),
                _ => None,
            };
            let at = ev.occurred_at;
            if let Err(e) = self.reference.apply_catalog(ev) {
                tracing::warn!(offset = m.offset(), error = %e, "catalog event refused");
            } else if let Some((kind, code, body)) = entry {
                let created_at = self
                    .store
                    .catalog_entry(&tenant, kind, &code)
                    .await?
                    .map_or(at, |e| e.created_at);
                self.store
                    .put_catalog_entry(
                        &tenant,
                        kind,
                        &CatalogEntry {
                            code,
                            created_at,
                            body,
                        },
                    )
                    .await?;
            } else if let Some((kind, code)) = deleted {
                self.store
                    .delete_catalog_entry(&tenant, &kind, &code)
                    .await?;
            }
            self.store
                .put_materialized(&self.topics.catalog, m.partition(), m.offset() + 1)
                .await?;
        }
        Ok(())
    }

    // ---- lifecycle ----

    async fn handle(&mut self, m: OwnedMessage) -> anyhow::Result<()> {
        let (p, offset) = (m.partition(), m.offset());
        if !self.partitions.contains_key(&p) {
            let (_, high) = self.lifecycle.fetch_watermarks(
                &self.topics.lifecycle,
                p,
                Duration::from_secs(10),
            )?;
            let materialized = self.store.materialized(&self.topics.lifecycle, p).await?;
            tracing::info!(
                partition = p,
                replay_end = high,
                materialized,
                "lifecycle partition assigned"
            );
            self.partitions.insert(
                p,
                PartitionState {
                    next: 0,
                    replay_end: high,
                    materialized,
                    ..Default::default()
                },
            );
        }
        let state = self.partitions.get_mut(&p).expect("just inserted");
        if offset < state.next {
            return Ok(());
        }
        state.next = offset + 1;
        let fresh = offset >= state.materialized;
        let decoded = billing_schemas::decode::<LifecycleEvent>(
            m.payload().unwrap_or_default(),
            kafka::content_type(&m),
        );
        let ev = match decoded {
            Ok(ev) => ev,
            Err(e) => {
                if fresh {
                    self.dead_letter(&m, &format!("undecodable: {e}")).await?;
                }
                return self.after(p, offset).await;
            }
        };
        match &ev.payload {
            Lifecycle::ClockTick(t) => {
                let key = (ev.tenant_id.clone(), t.clock_id.clone());
                let now = t.now;
                let state = self.partitions.get_mut(&p).expect("present");
                let at = state.clocks.entry(key.clone()).or_insert(now);
                *at = (*at).max(now);
                if state.caught_up {
                    self.bill_run(p, &key.0, &key.1, now).await?;
                    if key.1 != WALL {
                        self.store.put_test_clock(&key.0, &key.1, p, now).await?;
                    }
                }
            }
            Lifecycle::InvoiceFinalizeRequested(r) => {
                self.issued.finalize_early.insert(r.invoice_id.clone());
                let caught_up = self.partitions.get(&p).is_some_and(|s| s.caught_up);
                if caught_up {
                    let tenant = ev.tenant_id.clone();
                    let customer = r.customer_id.clone();
                    let clock = self
                        .reference
                        .customer(&tenant, &customer)
                        .map(|c| clock_of(c).to_owned());
                    if let Some(clock) = clock {
                        if let Some(now) = self.clock_now(p, &tenant, &clock) {
                            self.bill_customer_now(p, &tenant, &customer, now).await?;
                        }
                    }
                }
            }
            _ => {
                let tenant = ev.tenant_id.clone();
                let customer = ev.payload.customer_id().unwrap_or_default().to_owned();
                let subscription = match &ev.payload {
                    Lifecycle::SubscriptionCreated(s) => Some(s.subscription_id.clone()),
                    Lifecycle::SubscriptionChanged(s) => Some(s.subscription_id.clone()),
                    Lifecycle::SubscriptionPaused(s) | Lifecycle::SubscriptionResumed(s) => {
                        Some(s.subscription_id.clone())
                    }
                    Lifecycle::SubscriptionCanceled(s) => Some(s.subscription_id.clone()),
                    _ => None,
                };
                match self.reference.apply_lifecycle(ev) {
                    Err(reason) => {
                        self.metrics.lifecycle.with_label_values(&["refused"]).inc();
                        if fresh {
                            self.dead_letter(&m, &reason).await?;
                        }
                    }
                    Ok(()) => {
                        self.metrics.lifecycle.with_label_values(&["applied"]).inc();
                        if fresh {
                            self.materialize(&tenant, &customer, subscription.as_deref())
                                .await?;
                        }
                    }
                }
            }
        }
        self.after(p, offset).await
    }

    fn clock_now(&self, p: i32, tenant: &str, clock: &str) -> Option<DateTime<Utc>> {
        let s = self.partitions.get(&p)?;
        let own = s
            .clocks
            .get(&(tenant.to_owned(), clock.to_owned()))
            .copied();
        let wall = (clock == WALL)
            .then(|| s.clocks.get(&("*".to_owned(), WALL.to_owned())).copied())
            .flatten();
        own.max(wall)
    }

    /// Bookkeeping after a message: read-model progress, and the end of a partition's replay.
    async fn after(&mut self, p: i32, offset: i64) -> anyhow::Result<()> {
        let state = self.partitions.get_mut(&p).expect("present");
        if offset >= state.materialized {
            state.pending = Some(offset + 1);
        }
        if !state.caught_up && offset + 1 >= state.replay_end {
            state.caught_up = true;
            let clocks: Vec<((String, String), DateTime<Utc>)> =
                state.clocks.iter().map(|(k, v)| (k.clone(), *v)).collect();
            tracing::info!(
                partition = p,
                clocks = clocks.len(),
                "lifecycle partition caught up"
            );
            for ((tenant, clock), now) in clocks {
                self.bill_run(p, &tenant, &clock, now).await?;
                if clock != WALL {
                    self.store.put_test_clock(&tenant, &clock, p, now).await?;
                }
            }
            self.flush_progress().await?;
        }
        Ok(())
    }

    async fn flush_progress(&mut self) -> anyhow::Result<()> {
        for (p, s) in self.partitions.iter_mut() {
            if let Some(next) = s.pending.take() {
                self.store
                    .put_materialized(&self.topics.lifecycle, *p, next)
                    .await?;
                s.materialized = s.materialized.max(next);
            }
        }
        Ok(())
    }

    async fn materialize(
        &self,
        tenant: &str,
        customer: &str,
        subscription: Option<&str>,
    ) -> anyhow::Result<()> {
        let Some(c) = self.reference.customer(tenant, customer) else {
            return Ok(());
        };
        if let Some(v) = views::customer(c) {
            self.store.put_customer(tenant, &v).await?;
        }
        if let Some(s) = subscription.and_then(|id| c.subscriptions.iter().find(|s| s.id == id)) {
            self.store
                .put_subscription(tenant, &views::subscription(customer, s))
                .await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, m: &OwnedMessage, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            reason,
            "lifecycle event dead-lettered"
        );
        let record = kafka::dead_letter_record(m, &self.topics.lifecycle_dlq, reason);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("dead-letter enqueue failed: {e}"))?;
        billing_runtime::publish::ack(delivery).await
    }

    // ---- bill runs ----

    /// Bill every customer of partition `p` on the clock up to `now`.
    async fn bill_run(
        &mut self,
        p: i32,
        tenant: &str,
        clock: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let n = self.settings.kafka.partitions;
        let customers: Vec<(String, String)> = self
            .reference
            .customers()
            .filter(|((t, c), cust)| {
                (t == tenant || (tenant == "*" && clock == WALL))
                    && clock_of(cust) == clock
                    && kafka::partition_for_key(customer_key(t, c).as_bytes(), n) == p
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut usage_ready = false;
        let mut to_finalize: Vec<(String, InvoiceView)> = Vec::new();
        for (t, c) in customers {
            let Some(cust) = self.reference.customer(&t, &c) else {
                continue;
            };
            let (subs, dates) = bill::due_dates(&self.reference, &t, &c, cust, now);
            if dates.is_empty() {
                continue;
            }
            if self.issued.of(&t, &c).is_none() {
                let known = self.load_issued(&t, &c).await?;
                self.issued.load(&t, &c, known);
            }
            let issued = self.issued.of(&t, &c).cloned().unwrap_or_default();
            let due: Vec<DateTime<Utc>> = dates
                .into_iter()
                .filter(|d| issued.get(d) != Some(&InvoiceStatus::Finalized))
                .collect();
            if due.is_empty() {
                continue;
            }
            if !usage_ready {
                self.wait_for_usage(p).await?;
                usage_ready = true;
            }
            let usage = self.usage.aggregates(&t, &c).await?;
            let cust = self.reference.customer(&t, &c).expect("present");
            let grace = chrono::Duration::days(i64::from(
                cust.record
                    .as_ref()
                    .map_or(0, |r| r.invoice_grace_period_days.max(0)),
            ));
            for d in due {
                let id = billing_store::invoices::invoice_id(&t, &c, d);
                let early = self.issued.finalize_early.contains(&id);
                let final_now = now >= d + grace || early;
                let (status, issued_at) = if final_now {
                    (
                        InvoiceStatus::Finalized,
                        Some(if early && now < d + grace {
                            now
                        } else {
                            d + grace
                        }),
                    )
                } else {
                    (InvoiceStatus::Draft, None)
                };
                let Some(inv) =
                    bill::invoice_for(&t, &c, cust, &subs, &usage, d, status, issued_at)?
                else {
                    continue;
                };
                if status == InvoiceStatus::Draft {
                    self.store.put_invoice(&t, &inv).await?;
                    self.issued.set(&t, &c, d, InvoiceStatus::Draft);
                    self.metrics.invoices.with_label_values(&["draft"]).inc();
                } else if inv.total.is_zero() && !self.settings.invoicer.issue_zero_invoices {
                    self.issued.set(&t, &c, d, InvoiceStatus::Finalized);
                } else {
                    to_finalize.push((t.clone(), inv));
                }
            }
        }
        self.finalize(to_finalize).await
    }

    async fn bill_customer_now(
        &mut self,
        p: i32,
        tenant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        // A bill run limited to the clock of this customer re-evaluates its drafts, early ones included.
        let Some(c) = self.reference.customer(tenant, customer) else {
            return Ok(());
        };
        let clock = clock_of(c).to_owned();
        let tick_tenant = if clock == WALL { "*" } else { tenant };
        self.bill_run(p, tick_tenant, &clock, now).await
    }

    async fn load_issued(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<BTreeMap<DateTime<Utc>, InvoiceStatus>> {
        let mut out = BTreeMap::new();
        for id in self.store.invoice_ids_of(tenant, customer).await? {
            if let Some(inv) = self.store.invoice(tenant, &id).await? {
                // A finalized invoice without its number was cut short by a crash: finish it.
                let done = inv.status == InvoiceStatus::Finalized && inv.number.is_some();
                out.insert(
                    inv.billing_date,
                    if done {
                        InvoiceStatus::Finalized
                    } else {
                        InvoiceStatus::Draft
                    },
                );
            }
        }
        Ok(out)
    }

    /// Wait until rating has checkpointed every usage event produced to the customer's partition so far: its
    /// committed offset (committed only after the aggregates are durable) reaches the partition's end offset.
    async fn wait_for_usage(&self, p: i32) -> anyhow::Result<()> {
        let topic = self.topics.usage.clone();
        let deadline = tokio::time::Instant::now() + self.settings.invoicer.usage_wait;
        let (low, high) = self
            .watermarks
            .fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        if high <= low {
            return Ok(());
        }
        loop {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, p);
            let committed = self
                .watermarks
                .committed_offsets(tpl, Duration::from_secs(10))?;
            let at = committed
                .elements()
                .first()
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low);
            if at >= high {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "rating has checkpointed usage partition {p} up to {at}, not {high}, after {:?}",
                self.settings.invoicer.usage_wait
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number, store, publish and record finalized invoices, in (billing date, customer) order.
    async fn finalize(&mut self, mut invoices: Vec<(String, InvoiceView)>) -> anyhow::Result<()> {
        if invoices.is_empty() {
            return Ok(());
        }
        invoices.sort_by(|a, b| {
            (a.1.billing_date, &a.0, &a.1.customer_id).cmp(&(
                b.1.billing_date,
                &b.0,
                &b.1.customer_id,
            ))
        });
        // The rows first, without numbers: after a crash, such a row says a number may already be claimed.
        for (t, inv) in &invoices {
            self.store.put_invoice(t, inv).await?;
        }
        let mut scopes: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, (t, inv)) in invoices.iter().enumerate() {
            let scope = match self.settings.invoicer.numbering {
                NumberingScope::Tenant => "tenant".to_owned(),
                NumberingScope::Customer => format!("customer/{}", inv.customer_id),
            };
            scopes.entry((t.clone(), scope)).or_default().push(i);
        }
        for ((tenant, scope), idx) in scopes {
            let prefix = self.prefix(&tenant, &scope);
            let ids: Vec<String> = idx
                .iter()
                .map(|i| invoices[*i].1.invoice_id.clone())
                .collect();
            let mut numbers: HashMap<String, String> = HashMap::new();
            for id in &ids {
                if let Some(n) = self.restored.get(id) {
                    numbers.insert(id.clone(), n.clone());
                }
            }
            let open: Vec<String> = ids
                .iter()
                .filter(|id| !numbers.contains_key(*id))
                .cloned()
                .collect();
            if !open.is_empty() {
                // Claimed before a crash?
                let found = self.store.claimed_numbers(&tenant, &scope, &open).await?;
                for (id, n) in &found {
                    numbers.insert(
                        id.clone(),
                        format_number(&prefix, self.settings.invoicer.number_width, *n),
                    );
                }
                let fresh: Vec<String> = open
                    .into_iter()
                    .filter(|id| !found.contains_key(id))
                    .collect();
                if !fresh.is_empty() {
                    let first = self.store.claim_numbers(&tenant, &scope, &fresh).await?;
                    for (i, id) in fresh.iter().enumerate() {
                        numbers.insert(
                            id.clone(),
                            format_number(
                                &prefix,
                                self.settings.invoicer.number_width,
                                first + i as i64,
                            ),
                        );
                    }
                }
            }
            for i in idx {
                invoices[i].1.number = numbers.get(&invoices[i].1.invoice_id).cloned();
            }
        }
        // Publish, then analytics, then the numbered rows: a crash in between publishes again (same event id).
        let mut deliveries = Vec::with_capacity(invoices.len());
        for (t, inv) in &invoices {
            let ev = bill::finalized_event(t, inv);
            let payload = encode(&ev, Encoding::Avro)?;
            let key = customer_key(t, &inv.customer_id);
            let headers = OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(Encoding::Avro.content_type()),
            });
            let d = self
                .producer
                .send_result(
                    FutureRecord::to(&self.topics.invoices)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                )
                .map_err(|(e, _)| anyhow::anyhow!("publishing invoice failed: {e}"))?;
            deliveries.push(d);
        }
        for d in deliveries {
            billing_runtime::publish::ack(d).await?;
        }
        billing_store::invoice_facts::insert(&self.ch, &invoices).await?;
        for (t, inv) in &invoices {
            self.store.put_invoice(t, inv).await?;
            self.issued.set(
                t,
                &inv.customer_id,
                inv.billing_date,
                InvoiceStatus::Finalized,
            );
            self.metrics
                .invoices
                .with_label_values(&["finalized"])
                .inc();
        }
        Ok(())
    }

    fn prefix(&self, tenant: &str, scope: &str) -> String {
        let base = if self.settings.invoicer.number_prefix.is_empty() {
            tenant.to_uppercase()
        } else {
            self.settings.invoicer.number_prefix.clone()
        };
        match scope.strip_prefix("customer/") {
            Some(c) => format!("{base}-{c}"),
            None => base,
        }
    }
}
