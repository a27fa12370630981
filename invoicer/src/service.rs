//! The invoicer's loop: one group consumer on `billing.lifecycle` and a reader of the whole `billing.catalog`.
//!
//! State is the fold of the lifecycle partitions it owns ([`Reference`]), rebuilt at start by reading them from
//! their beginning: the group never commits offsets, so every assignment starts at the earliest offset, and a
//! partition already folded skips what it has applied. Effects are idempotent, so replaying them is harmless:
//! read models are upserts (skipped below the partition's materialized offset), invoices have deterministic ids
//! and a finalized invoice is never recomputed. While a partition replays its history, clock ticks only move the
//! clock; once it has caught up, the bill run runs for the latest time of each clock, then at every tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::analytics::MrrWriter;
use billing_core::invoice::DraftLine;
use billing_core::invoicing::BillableSubscription;
use billing_runtime::config::{NumberingScope, Settings};
use billing_runtime::kafka::{self, Revocations, Topics};
use billing_runtime::Shutdown;
use billing_schemas::catalog::{Catalog, CatalogEvent};
use billing_schemas::lifecycle::{
    CreditNoteRequested, InvoiceVoidRequested, Lifecycle, LifecycleEvent, OneOffInvoiceRequested,
};
use billing_schemas::reference::{PriorUse, Reference};
use billing_schemas::{customer_key, encode, Encoding, CONTENT_TYPE_HEADER};
use billing_store::analytics::{self, MrrRow};
use billing_store::billing::{BillingStore, CatalogEntry};
use billing_store::catalog_entries;
use billing_store::credit_notes::CreditNoteStore;
use billing_store::invoice_numbers::format_number;
use billing_store::invoices::{void_refusal, InvoiceStatus, InvoiceView, VoidRefusal};
use billing_store::late_usage::{self, LateUsageView};
use billing_store::payments::PaymentStore;
use billing_store::usage::{CustomerUsage, UsageStore};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;

use crate::bill::{self, clock_of, Issued, WALL};
use crate::credit_notes;
use crate::metrics::Metrics;
use crate::views;

/// How often pending read-model progress is recorded at least.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often the lifecycle lag gauge is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Store requests a bill run keeps in flight.
const CONCURRENCY: usize = 64;

/// (tenant, customer, its subscriptions as the core bills them, its billing dates so far).
type CustomerWork = (
    String,
    String,
    Vec<BillableSubscription>,
    Vec<DateTime<Utc>>,
);

/// Invoices of one billing date by customer: (invoice id, status, number).
type IssuedOnDate = HashMap<String, (String, String, String)>;

/// A credit note the invoicer issues of its own accord: type `credit`, reason `order_change`, crediting (line
/// index, amount before tax) of the invoice.
fn own_credit_note(
    id: String,
    customer: &str,
    invoice_id: String,
    memo: String,
    lines: &[(usize, Decimal)],
) -> CreditNoteRequested {
    CreditNoteRequested {
        credit_note_id: id,
        customer_id: customer.to_owned(),
        invoice_id,
        kind: billing_core::credit_note::CreditNoteKind::Credit,
        reason: "order_change".into(),
        memo: Some(memo),
        lines: lines
            .iter()
            .map(
                |(idx, amount)| billing_schemas::lifecycle::CreditNoteLineRequest {
                    line_index: *idx as i32,
                    amount: amount.to_string(),
                },
            )
            .collect(),
    }
}

/// A customer's late-usage corrections for its next invoice (see [`Invoicer::late_usage`]).
#[derive(Debug, Default)]
struct LatePlan {
    /// Adjustment lines.
    lines: Vec<DraftLine>,
    /// The corrections they bill.
    records: Vec<LateUsageView>,
    /// Credit notes of the negative corrections.
    credit_notes: Vec<CreditNoteRequested>,
    /// The negative corrections, with the invoices their credit notes credit.
    pending: Vec<(LateUsageView, Vec<String>)>,
}

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
    /// (tenant, billing date) whose issued invoices were read since the partition was assigned.
    scanned: HashSet<(String, DateTime<Utc>)>,
    /// Offsets below this are applied to the fold.
    applied: i64,
    /// What applying the last one said (for its effects, when they are retried).
    last_outcome: Option<Result<(), String>>,
}

/// The invoicer.
pub struct Invoicer {
    settings: Settings,
    topics: Topics,
    store: Arc<BillingStore>,
    usage: UsageStore,
    ch: clickhouse::Client,
    producer: FutureProducer,
    lifecycle: StreamConsumer<Revocations>,
    revocations: Revocations,
    catalog: BaseConsumer,
    /// Reads rating's committed offsets (its checkpoints) and the usage topic's end offsets.
    watermarks: BaseConsumer,
    reference: Reference,
    partitions: HashMap<i32, PartitionState>,
    /// (tenant, customer, subscription) whose read models changed since the last flush.
    dirty: HashSet<(String, String, Option<String>)>,
    issued: Issued,
    /// Numbers already given, read back from `billing.invoices` (they survive the tables being wiped).
    restored: HashMap<String, String>,
    metrics: Metrics,
    credit_notes: Arc<CreditNoteStore>,
    payments: Arc<PaymentStore>,
    /// Writes the subscriptions' MRR to ClickHouse.
    mrr: MrrWriter,
}

/// The `invoices_by_date` partition of the one-off invoices of lifecycle partition `p`: negative, so never a
/// bill run's.
pub fn one_off_partition(p: i32) -> i32 {
    -1 - p
}

/// Write invoices, many at a time.
async fn put_invoices(
    store: &BillingStore,
    invoices: &[(String, InvoiceView)],
    p: i32,
) -> anyhow::Result<()> {
    store.put_invoices(invoices, p).await
}

fn state_outcome(
    partitions: &mut HashMap<i32, PartitionState>,
    p: i32,
    outcome: &Result<(), String>,
) {
    if let Some(s) = partitions.get_mut(&p) {
        s.last_outcome = Some(outcome.clone());
    }
}

impl Invoicer {
    /// Connect everything.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        settings: Settings,
        store: Arc<BillingStore>,
        usage: UsageStore,
        ch: clickhouse::Client,
        metrics: Metrics,
        credit_notes: Arc<CreditNoteStore>,
        payments: Arc<PaymentStore>,
        mrr: MrrWriter,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let revocations = Revocations::default();
        let lifecycle = kafka::consumer(
            &settings.kafka,
            &settings.invoicer.group_id,
            revocations.clone(),
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
            revocations,
            catalog,
            watermarks,
            reference: Reference::default(),
            partitions: HashMap::new(),
            dirty: HashSet::new(),
            issued: Issued::default(),
            restored: HashMap::new(),
            metrics,
            settings,
            credit_notes,
            payments,
            mrr,
        })
    }

    /// Run until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.restore_numbers().await?;
        self.assign_catalog()?;
        self.catalog_catch_up(&shutdown).await?;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut lag_reported = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = flush.tick() => {
                    // A failed write is retried at the next tick (nothing is lost: the views stay dirty and the
                    // progress pending until they are written).
                    if let Err(e) = self.drain_catalog().await {
                        tracing::warn!(error = %e, "catalog read failed; retrying");
                    }
                    if let Err(e) = self.flush_progress().await {
                        tracing::warn!(error = %e, "read model flush failed; retrying");
                        self.metrics.retries.inc();
                    }
                    if lag_reported.elapsed() >= LAG_EVERY {
                        self.report_lag();
                        lag_reported = tokio::time::Instant::now();
                    }
                }
                m = self.lifecycle.recv() => {
                    let m = match m {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "lifecycle consumer error");
                            continue;
                        }
                    };
                    if let Err(e) = self.forget_revoked().await {
                        tracing::warn!(error = %e, "forgetting revoked partitions failed");
                    }
                    // A failure (a store or the broker unavailable) is retried with backoff: every effect of
                    // handling a message is idempotent, and the messages after it must wait for it.
                    let mut backoff = Duration::from_millis(200);
                    while let Err(e) = self.handle(m.clone()).await {
                        tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "lifecycle event failed; retrying");
                        self.metrics.retries.inc();
                        if let Some(s) = self.partitions.get_mut(&m.partition()) {
                            s.next = s.next.min(m.offset());
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        self.flush_progress().await?;
        Ok(())
    }

    /// Drop the state of partitions another instance now owns: if one comes back, it is folded again from its
    /// start (nothing is committed), and what was issued meanwhile is read again.
    async fn forget_revoked(&mut self) -> anyhow::Result<()> {
        let revoked = self.revocations.take();
        if revoked.is_empty() {
            return Ok(());
        }
        // What is not flushed is not lost: the partitions' progress stays where it was, so their next owner writes
        // those views again.
        if let Err(e) = self.flush_progress().await {
            tracing::warn!(error = %e, "flush before a revocation failed");
        }
        let n = self.settings.kafka.partitions;
        for p in &revoked {
            self.partitions.remove(p);
        }
        let gone = |t: &str, c: &str| {
            revoked.contains(&kafka::partition_for_key(customer_key(t, c).as_bytes(), n))
        };
        self.reference.retain_customers(|t, c| !gone(t, c));
        self.issued.retain(|t, c| !gone(t, c));
        tracing::info!(partitions = ?revoked, "lifecycle partitions revoked");
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
                Catalog::TaxRate(x) => Some((
                    catalog_entries::TAX_RATE,
                    x.code.clone(),
                    serde_json::to_string(x)?,
                )),
                Catalog::Coupon(x) => Some((
                    catalog_entries::COUPON,
                    x.code.clone(),
                    serde_json::to_string(x)?,
                )),
                Catalog::AddOn(x) => Some((
                    catalog_entries::ADD_ON,
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
            let applied = match self.reference.apply_catalog(ev) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %e, "catalog event refused");
                    false
                }
            };
            if let Some((catalog_entries::PLAN, code, _)) = entry.as_ref().filter(|_| applied) {
                self.plan_edited(&tenant, code);
            }
            // Applied to the fold once; its writes are retried until they succeed (the catalog is not read again).
            let mut backoff = Duration::from_millis(200);
            loop {
                let written = self
                    .write_catalog(
                        &tenant,
                        applied.then_some(&entry).and_then(|e| e.as_ref()),
                        &deleted,
                        at,
                    )
                    .await;
                let progress = match written {
                    Ok(()) => {
                        self.store
                            .put_materialized(&self.topics.catalog, m.partition(), m.offset() + 1)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match progress {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(offset = m.offset(), error = %e, "catalog read model write failed; retrying");
                        self.metrics.retries.inc();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        Ok(())
    }

    /// Write one catalog event's read model: the entry (unless an older version of a plan), or its removal.
    async fn write_catalog(
        &self,
        tenant: &str,
        entry: Option<&(&'static str, String, String)>,
        deleted: &Option<(String, String)>,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if let Some((kind, code, body)) = entry {
            let stored = self.store.catalog_entry(tenant, kind, code).await?;
            let created_at = stored.as_ref().map_or(at, |e| e.created_at);
            // The entry shows a plan's latest version; versions are keyed apart (and may sit on different
            // partitions), so an older one read later does not replace it.
            let version = |b: &str| {
                serde_json::from_str::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v.get("version").and_then(|n| n.as_i64()))
                    .unwrap_or(1)
            };
            let older = stored
                .as_ref()
                .is_some_and(|e| version(&e.body) > version(body));
            if !older {
                let entry = CatalogEntry {
                    code: code.clone(),
                    created_at,
                    body: body.clone(),
                };
                self.store.put_catalog_entry(tenant, kind, &entry).await?;
            }
        } else if let Some((kind, code)) = deleted {
            self.store.delete_catalog_entry(tenant, kind, code).await?;
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
        // Credits bought for a wallet: their invoice is issued once the top-up is applied.
        let purchase = match &ev.payload {
            Lifecycle::WalletToppedUp(t) if t.invoice_id.is_some() => Some(t.clone()),
            _ => None,
        };
        let (tenant_of, at_of) = (ev.tenant_id.clone(), ev.occurred_at);
        let mut applied = false;
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
            Lifecycle::CreditNoteRequested(r) => {
                if fresh {
                    if let Err(reason) = self.credit_note(&ev.tenant_id, ev.occurred_at, r).await? {
                        self.dead_letter(&m, &reason).await?;
                    }
                }
            }
            Lifecycle::OneOffInvoiceRequested(r) => {
                if fresh {
                    if let Err(reason) = self.one_off(p, &ev.tenant_id, ev.occurred_at, r).await? {
                        self.dead_letter(&m, &reason).await?;
                    }
                }
            }
            Lifecycle::InvoiceVoidRequested(r) => {
                if fresh {
                    if let Err(reason) = self.void(p, &ev.tenant_id, ev.occurred_at, r).await? {
                        self.dead_letter(&m, &reason).await?;
                    }
                }
            }
            _ => {
                let tenant = ev.tenant_id.clone();
                let customer = ev.payload.customer_id().unwrap_or_default().to_owned();
                let subscription = match &ev.payload {
                    Lifecycle::SubscriptionCreated(s) => Some(s.subscription_id.clone()),
                    Lifecycle::SubscriptionChanged(s) => Some(s.subscription_id.clone()),
                    Lifecycle::SubscriptionPaused(s)
                    | Lifecycle::SubscriptionResumed(s)
                    | Lifecycle::SubscriptionSuspended(s)
                    | Lifecycle::SubscriptionUnsuspended(s) => Some(s.subscription_id.clone()),
                    Lifecycle::SubscriptionCanceled(s) => Some(s.subscription_id.clone()),
                    _ => None,
                };
                // Applied to the fold once, even when its effects below fail and the message is handled again.
                let state = self.partitions.get_mut(&p).expect("present");
                let outcome = if offset >= state.applied {
                    state.applied = offset + 1;
                    let outcome = self.reference.apply_lifecycle(ev);
                    state_outcome(&mut self.partitions, p, &outcome);
                    outcome
                } else {
                    self.partitions
                        .get(&p)
                        .and_then(|s| s.last_outcome.clone())
                        .unwrap_or(Ok(()))
                };
                match outcome {
                    Err(reason) => {
                        self.metrics.lifecycle.with_label_values(&["refused"]).inc();
                        if fresh {
                            self.dead_letter(&m, &reason).await?;
                        }
                    }
                    Ok(()) => {
                        applied = true;
                        self.metrics.lifecycle.with_label_values(&["applied"]).inc();
                        if fresh {
                            // Written, many at a time, before the partition's progress is recorded.
                            self.dirty.insert((tenant, customer, subscription));
                        }
                    }
                }
            }
        }
        if let Some(top_up) = purchase.filter(|_| applied && fresh) {
            if let Err(reason) = self.credit_purchase(p, &tenant_of, at_of, &top_up).await? {
                // The credits are in the wallet; only their invoice could not be issued.
                tracing::warn!(
                    tenant = tenant_of,
                    wallet = top_up.wallet_id,
                    reason,
                    "credit purchase not invoiced"
                );
                self.dead_letter(&m, &reason).await?;
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
            // Only now: a failed catch-up bill run is run again when the message is retried.
            self.partitions.get_mut(&p).expect("present").caught_up = true;
            self.check_mrr(p);
            self.flush_progress().await?;
        }
        Ok(())
    }

    /// Set the lag gauge: the end offset of each owned partition less the next offset to handle. A partition whose
    /// end offset cannot be read now keeps the gauge as it was.
    fn report_lag(&self) {
        let mut lag = 0;
        for (p, s) in &self.partitions {
            match self.watermarks.fetch_watermarks(
                &self.topics.lifecycle,
                *p,
                Duration::from_secs(1),
            ) {
                Ok((_, high)) => lag += (high - s.next).max(0),
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "lag not measured");
                    return;
                }
            }
        }
        self.metrics.lifecycle_lag.set(lag);
    }

    async fn flush_progress(&mut self) -> anyhow::Result<()> {
        let dirty: Vec<(String, String, Option<String>)> = self.dirty.drain().collect();
        if !dirty.is_empty() {
            // One MRR version for every subscription of this flush: the write's millisecond.
            let version = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
            let writes: Vec<_> = dirty
                .iter()
                .map(|(t, c, s)| self.materialize(t, c, s.as_deref(), version))
                .collect();
            let written = futures::stream::iter(writes)
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<Vec<MrrRow>>>()
                .await;
            let mrr: Vec<MrrRow> = match written {
                Ok(rows) => rows.into_iter().flatten().collect(),
                Err(e) => {
                    // Written again at the next flush; progress is not recorded before.
                    self.dirty.extend(dirty);
                    return Err(e);
                }
            };
            // Written by the MRR task, off this path: a ClickHouse outage does not hold the read models.
            self.mrr.changed(mrr);
        }
        for (p, s) in self.partitions.iter_mut() {
            if let Some(next) = s.pending {
                // On failure the progress stays pending, for the next flush.
                self.store
                    .put_materialized(&self.topics.lifecycle, *p, next)
                    .await?;
                s.pending = None;
                s.materialized = s.materialized.max(next);
            }
        }
        Ok(())
    }

    /// Write a customer's view and, when given, its subscription's; returns the subscription's MRR rows (version
    /// `version`) for the flush to insert.
    async fn materialize(
        &self,
        tenant: &str,
        customer: &str,
        subscription: Option<&str>,
        version: u64,
    ) -> anyhow::Result<Vec<MrrRow>> {
        let Some(c) = self.reference.customer(tenant, customer) else {
            return Ok(Vec::new());
        };
        let view = views::customer(c);
        let folded = subscription.and_then(|id| c.subscriptions.iter().find(|s| s.id == id));
        let sub = folded.map(|s| views::subscription(customer, s));
        let mrr = folded
            .map(|s| self.mrr_rows(tenant, customer, c, s, version))
            .unwrap_or_default();
        let (a, b) = futures::join!(
            async {
                match &view {
                    Some(v) => self.store.put_customer(tenant, v).await,
                    None => Ok(()),
                }
            },
            async {
                match &sub {
                    Some(s) => self.store.put_subscription(tenant, s).await,
                    None => Ok(()),
                }
            }
        );
        a?;
        b?;
        Ok(mrr)
    }

    /// A partition's history has been read: its subscriptions' MRR, for the MRR task to write where ClickHouse has
    /// another (what a crash kept from being written, or subscriptions older than the MRR facts).
    fn check_mrr(&self, p: i32) {
        let n = self.settings.kafka.partitions;
        let version = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let mut rows = Vec::new();
        for ((t, c), cust) in self.reference.customers() {
            if kafka::partition_for_key(customer_key(t, c).as_bytes(), n) != p {
                continue;
            }
            for s in &cust.subscriptions {
                rows.extend(self.mrr_rows(t, c, cust, s, version));
            }
        }
        self.mrr.check(rows);
    }

    /// A subscription's MRR rows (none when it cannot be billed: the bill run says why).
    fn mrr_rows(
        &self,
        tenant: &str,
        customer: &str,
        c: &billing_schemas::reference::Customer,
        s: &billing_schemas::reference::Subscription,
        version: u64,
    ) -> Vec<MrrRow> {
        match self.reference.mrr(tenant, c, s) {
            Ok((currency, segments)) => {
                let segments: Vec<analytics::Segment> = segments
                    .into_iter()
                    .map(|(seg, plan)| (seg.from, seg.to, plan, seg.mrr))
                    .collect();
                analytics::mrr_rows(tenant, customer, &s.id, &currency, version, &segments)
            }
            Err(reason) => {
                tracing::debug!(tenant, customer, subscription = s.id, reason, "no MRR");
                Vec::new()
            }
        }
    }

    /// After a plan's edit, the subscriptions on it whose MRR may have changed: those of the customers of owned
    /// partitions that have caught up with their history (a partition still replaying would write an MRR older
    /// than the one stored; its subscriptions show the edit at their next change, `docs/analytics.md`).
    fn plan_edited(&mut self, tenant: &str, code: &str) {
        let n = self.settings.kafka.partitions;
        let caught_up: HashSet<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.caught_up)
            .map(|(p, _)| *p)
            .collect();
        let mut on_plan = Vec::new();
        for ((t, c), cust) in self.reference.customers() {
            if t != tenant
                || !caught_up.contains(&kafka::partition_for_key(customer_key(t, c).as_bytes(), n))
            {
                continue;
            }
            for s in cust
                .subscriptions
                .iter()
                .filter(|s| s.plans.iter().any(|p| p == code))
            {
                on_plan.push((t.to_owned(), c.to_owned(), Some(s.id.clone())));
            }
        }
        self.dirty.extend(on_plan);
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

    /// Bill every customer of partition `p` on the clock up to `now`: in memory first (billing dates, what is
    /// already issued), then the store reads and writes, many at a time.
    async fn bill_run(
        &mut self,
        p: i32,
        tenant: &str,
        clock: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let n = self.settings.kafka.partitions;
        let mut work: Vec<CustomerWork> = Vec::new();
        for ((t, c), cust) in self.reference.customers() {
            let ours = (t == tenant || (tenant == "*" && clock == WALL))
                && clock_of(cust) == clock
                && kafka::partition_for_key(customer_key(t, c).as_bytes(), n) == p;
            if !ours {
                continue;
            }
            let (subs, dates) = bill::due_dates(&self.reference, t, c, cust, now);
            if !dates.is_empty() {
                work.push((t.to_owned(), c.to_owned(), subs, dates));
            }
        }
        // What is already issued: one read per (tenant, billing date) of this partition, once per assignment.
        let mut to_scan: Vec<(String, DateTime<Utc>)> = Vec::new();
        {
            let state = self.partitions.get(&p).expect("present");
            for (t, _, _, dates) in &work {
                for d in dates {
                    let key = (t.clone(), *d);
                    if !state.scanned.contains(&key) && !to_scan.contains(&key) {
                        to_scan.push(key);
                    }
                }
            }
        }
        let store = self.store.clone();
        // Futures collected first: a lazy `map` over borrowed items is not `Send` for every lifetime.
        let scans: Vec<_> = to_scan
            .into_iter()
            .map(|(t, d)| {
                let store = store.clone();
                async move {
                    let rows = store.invoices_on(&t, d, p).await?;
                    anyhow::Ok((t, d, rows))
                }
            })
            .collect();
        let scans: Vec<_> = futures::stream::iter(scans)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (t, d, rows) in scans {
            for (customer, _id, status, number, usage_offset) in rows {
                let done = InvoiceStatus::issued(&status) && !number.is_empty();
                let st = if done {
                    InvoiceStatus::Finalized
                } else {
                    InvoiceStatus::Draft
                };
                self.issued.set(&t, &customer, d, st);
                if done {
                    self.issued.set_usage_offset(&t, &customer, d, usage_offset);
                }
            }
            self.partitions
                .get_mut(&p)
                .expect("present")
                .scanned
                .insert((t, d));
        }
        // Due: every billing date not finalized yet.
        let mut due_work = Vec::new();
        for (t, c, subs, dates) in work {
            let issued = self.issued.of(&t, &c);
            let due: Vec<DateTime<Utc>> = dates
                .into_iter()
                .filter(|d| issued.and_then(|m| m.get(d)) != Some(&InvoiceStatus::Finalized))
                .collect();
            if !due.is_empty() {
                due_work.push((t, c, subs, due));
            }
        }
        if due_work.is_empty() {
            return Ok(());
        }
        // Usage: only customers with a usage charge need rating's aggregates, and rating must have checkpointed
        // the partition first.
        let metered = |subs: &[BillableSubscription]| {
            subs.iter()
                .any(|s| s.plans.iter().any(|p| !p.charges.is_empty()))
        };
        let usage_offset = if due_work.iter().any(|(_, _, subs, _)| metered(subs)) {
            Some(self.wait_for_usage(p).await?)
        } else {
            None
        };
        let usage = &self.usage;
        let reads: Vec<_> = due_work
            .iter()
            .map(|(t, c, subs, _)| {
                let metered = metered(subs);
                let unique = subs.iter().any(|s| {
                    s.plans.iter().any(|p| {
                        p.charges.iter().any(|ch| {
                            ch.metric.aggregation_type
                                == billing_core::aggregation::AggregationType::UniqueCountAgg
                        })
                    })
                });
                async move {
                    if metered {
                        usage.aggregates_with(t, c, unique).await
                    } else {
                        Ok(CustomerUsage::default())
                    }
                }
            })
            .collect();
        let usages: Vec<CustomerUsage> = futures::stream::iter(reads)
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut drafts: Vec<(String, InvoiceView)> = Vec::new();
        let mut to_finalize: Vec<(String, InvoiceView)> = Vec::new();
        for ((t, c, subs, due), usage) in due_work.into_iter().zip(usages) {
            let Some(cust) = self.reference.customer(&t, &c) else {
                continue;
            };
            // What the customer's coupons discounted before: on its issued invoices, then on each invoice of this
            // run in billing-date order (a draft included: it is billed again on every tick until finalized).
            let mut prior_use = if cust.coupons.is_empty() && cust.wallets.is_empty() {
                PriorUse::default()
            } else {
                let first = due.first().copied().unwrap_or(now);
                self.store.prior_use_before(&t, &c, first).await?
            };
            let grace = chrono::Duration::days(i64::from(
                cust.record
                    .as_ref()
                    .map_or(0, |r| r.invoice_grace_period_days.max(0)),
            ));
            let status_on = |issued: &Issued, d: DateTime<Utc>| {
                let id = billing_store::invoices::invoice_id(&t, &c, d);
                if now >= d + grace {
                    (InvoiceStatus::Finalized, Some(d + grace))
                } else if issued.finalize_early.contains(&id) {
                    (InvoiceStatus::Finalized, Some(now))
                } else {
                    (InvoiceStatus::Draft, None)
                }
            };
            // Late usage goes on the first invoice of the run.
            let first = due[0];
            let (first_status, _) = status_on(&self.issued, first);
            let mut late = self
                .late_usage(
                    &t,
                    &c,
                    &subs,
                    &usage,
                    first,
                    first_status == InvoiceStatus::Finalized,
                )
                .await?;
            for d in due {
                let (status, issued_at) = status_on(&self.issued, d);
                let computed = bill::invoice_for(
                    &self.reference,
                    &t,
                    &c,
                    &subs,
                    &usage,
                    &prior_use,
                    &late.lines,
                    d,
                    status,
                    issued_at,
                );
                let mut inv = match computed {
                    Ok(Some(inv)) => inv,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(tenant = t, customer = c, billing_date = %d, error = %e, "invoice not computed");
                        continue;
                    }
                };
                // The corrections go on the first invoice computed; its credit notes are issued now that it is.
                let plan = std::mem::take(&mut late);
                inv.late_usage = self
                    .issue_late_credits(&t, &c, issued_at.unwrap_or(d), plan)
                    .await?;
                inv.usage_offset = usage_offset;
                inv.record_use(&mut prior_use);
                // A zero invoice a coupon or a late-usage correction was recorded on is issued all the same.
                let unrecorded =
                    inv.total.is_zero() && inv.coupons.is_empty() && inv.late_usage.is_empty();
                if status == InvoiceStatus::Draft {
                    drafts.push((t.clone(), inv));
                } else if unrecorded && !self.settings.invoicer.issue_zero_invoices {
                    self.issued.set(&t, &c, d, InvoiceStatus::Finalized);
                    self.issued.set_usage_offset(&t, &c, d, usage_offset);
                } else {
                    to_finalize.push((t.clone(), inv));
                }
            }
        }
        put_invoices(&self.store, &drafts, p).await?;
        for (t, inv) in &drafts {
            self.issued
                .set(t, &inv.customer_id, inv.billing_date, InvoiceStatus::Draft);
            self.metrics.invoices.with_label_values(&["draft"]).inc();
        }
        self.finalize_carrying(p, to_finalize).await
    }

    async fn bill_customer_now(
        &mut self,
        p: i32,
        tenant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        // A bill run of the customer's clock re-evaluates its drafts, the one asked to finalize early included.
        let Some(c) = self.reference.customer(tenant, customer) else {
            return Ok(());
        };
        let clock = clock_of(c).to_owned();
        let tick_tenant = if clock == WALL { "*" } else { tenant };
        self.bill_run(p, tick_tenant, &clock, now).await
    }

    /// Wait until rating has checkpointed every usage event produced to the customer's partition so far: its
    /// committed offset (committed only after the aggregates are durable) reaches the partition's end offset.
    /// Returns the end offset waited for: every event before it is in the aggregates.
    async fn wait_for_usage(&self, p: i32) -> anyhow::Result<i64> {
        let topic = self.topics.usage.clone();
        let deadline = tokio::time::Instant::now() + self.settings.invoicer.usage_wait;
        let (low, high) = self
            .watermarks
            .fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        if high <= low {
            return Ok(high);
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
                return Ok(high);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "rating has checkpointed usage partition {p} up to {at}, not {high}, after {:?}; the bill run \
                 waits for it",
                self.settings.invoicer.usage_wait
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number, store, publish and record finalized invoices, in (billing date, customer) order.
    async fn finalize(
        &mut self,
        p: i32,
        invoices: Vec<(String, InvoiceView)>,
    ) -> anyhow::Result<()> {
        self.number_and_issue(p, invoices, true).await
    }

    /// Number, publish, record and store finalized invoices. `p` is the partition of their `invoices_by_date`
    /// entries; `billing_dates` says whether their billing dates are the bill run's (a one-off invoice's is not:
    /// its entry lives apart, see [`one_off_partition`]).
    async fn number_and_issue(
        &mut self,
        p: i32,
        mut invoices: Vec<(String, InvoiceView)>,
        billing_dates: bool,
    ) -> anyhow::Result<()> {
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
        // Known numbers, and the invoices a run cut short may have numbered already.
        let mut numbers: HashMap<String, String> = HashMap::new();
        let mut unsure: Vec<usize> = Vec::new();
        let mut known: HashMap<(String, DateTime<Utc>), IssuedOnDate> = HashMap::new();
        for (t, inv) in &invoices {
            let key = (t.clone(), inv.billing_date);
            if !known.contains_key(&key) {
                let rows = self.store.invoices_on(t, inv.billing_date, p).await?;
                known.insert(
                    key.clone(),
                    rows.into_iter()
                        .map(|(c, id, status, number, _)| (c, (id, status, number)))
                        .collect(),
                );
            }
        }
        for (i, (t, inv)) in invoices.iter().enumerate() {
            if let Some(n) = self.restored.get(&inv.invoice_id) {
                numbers.insert(inv.invoice_id.clone(), n.clone());
                continue;
            }
            // The entry is this invoice's only if it has its id: a customer's one-off invoices of one instant (a
            // test clock's) share the entry, each overwriting the one before.
            let row = known
                .get(&(t.clone(), inv.billing_date))
                .and_then(|m| m.get(&inv.customer_id))
                .filter(|(id, ..)| *id == inv.invoice_id);
            match row {
                Some((_, status, number))
                    if InvoiceStatus::issued(status) && !number.is_empty() =>
                {
                    numbers.insert(inv.invoice_id.clone(), number.clone());
                }
                Some((_, status, _)) if status == billing_store::invoices::NUMBERING => {
                    unsure.push(i)
                }
                _ => {}
            }
        }
        // Mark every invoice still to number first: after a crash, the mark says a number may be claimed.
        let unnumbered: Vec<(String, InvoiceView)> = invoices
            .iter()
            .filter(|(_, inv)| !numbers.contains_key(&inv.invoice_id))
            .cloned()
            .collect();
        self.store
            .mark_invoices(&unnumbered, p, billing_store::invoices::NUMBERING)
            .await?;
        let mut scopes: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, (t, inv)) in invoices.iter().enumerate() {
            if numbers.contains_key(&inv.invoice_id) {
                continue;
            }
            let scope = match self.settings.invoicer.numbering {
                NumberingScope::Tenant => "tenant".to_owned(),
                NumberingScope::Customer => format!("customer/{}", inv.customer_id),
            };
            scopes.entry((t.clone(), scope)).or_default().push(i);
        }
        let width = self.settings.invoicer.number_width;
        for ((tenant, scope), idx) in scopes {
            let prefix = self.prefix(&tenant, &scope);
            let mut open: Vec<String> = idx
                .iter()
                .map(|i| invoices[*i].1.invoice_id.clone())
                .collect();
            if idx.iter().any(|i| unsure.contains(i)) {
                let found = self.store.claimed_numbers(&tenant, &scope, &open).await?;
                for (id, n) in &found {
                    numbers.insert(id.clone(), format_number(&prefix, width, *n));
                }
                open.retain(|id| !found.contains_key(id));
            }
            if !open.is_empty() {
                let first = self.store.claim_numbers(&tenant, &scope, &open).await?;
                for (k, id) in open.iter().enumerate() {
                    numbers.insert(id.clone(), format_number(&prefix, width, first + k as i64));
                }
            }
        }
        for (_, inv) in invoices.iter_mut() {
            inv.number = numbers.get(&inv.invoice_id).cloned();
        }
        // Publish, then analytics, then the numbered rows: a crash in between publishes again (same event id,
        // same number).
        let mut deliveries = Vec::with_capacity(invoices.len());
        for (t, inv) in &invoices {
            deliveries.push(self.send_invoice_event(
                t,
                &inv.customer_id,
                &bill::finalized_event(t, inv),
            )?);
        }
        for d in deliveries {
            billing_runtime::publish::ack(d).await?;
        }
        billing_store::invoice_facts::insert(&self.ch, &invoices).await?;
        put_invoices(&self.store, &invoices, p).await?;
        for (t, inv) in &invoices {
            if billing_dates {
                self.issued.set(
                    t,
                    &inv.customer_id,
                    inv.billing_date,
                    InvoiceStatus::Finalized,
                );
                self.issued.set_usage_offset(
                    t,
                    &inv.customer_id,
                    inv.billing_date,
                    inv.usage_offset,
                );
            }
            self.metrics
                .invoices
                .with_label_values(&["finalized"])
                .inc();
        }
        Ok(())
    }

    /// The late-usage corrections of a customer whose next invoice is billed on `date` (see
    /// `billing_store::late_usage`): the adjustment lines to put on it and the corrections to record on it; when that
    /// invoice is being finalized, the credit notes of the negative ones too (one per invoice credited, its id fixed
    /// by the invoice and `date`), which [`Self::issue_late_credits`] issues once the invoice is computed. A draft
    /// carries only its adjustment lines, recomputed at every tick.
    #[allow(clippy::too_many_arguments)]
    async fn late_usage(
        &mut self,
        tenant: &str,
        customer: &str,
        subs: &[BillableSubscription],
        usage: &CustomerUsage,
        date: DateTime<Utc>,
        finalizing: bool,
    ) -> anyhow::Result<LatePlan> {
        let mut plan = LatePlan::default();
        let Some((last, offset)) = self.issued.last_finalized_before(tenant, customer, date) else {
            return Ok(plan);
        };
        let changed = late_usage::changed_since(usage, last, offset);
        if changed.is_empty() {
            return Ok(plan);
        }
        let invoices = self.store.invoices_of(tenant, customer).await?;
        let priced = late_usage::deltas(
            &self.reference,
            tenant,
            customer,
            subs,
            usage,
            &changed,
            &invoices,
            date,
        );
        let deltas = match priced {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(tenant, customer, billing_date = %date, error = %e, "late usage not priced");
                return Ok(plan);
            }
        };
        let Some(c) = self.reference.customer(tenant, customer) else {
            return Ok(plan);
        };
        let tz = c.tz();
        let Some(currency) = c
            .record
            .as_ref()
            .and_then(|r| billing_core::Currency::parse(&r.currency).ok())
        else {
            return Ok(plan);
        };
        (plan.lines, plan.records) = late_usage::adjustments(&deltas, currency, tz);
        let negative: Vec<&late_usage::LateDelta> =
            deltas.iter().filter(|d| d.delta < Decimal::ZERO).collect();
        if negative.is_empty() || !finalizing {
            return Ok(plan);
        }
        // What credit notes took back from each line already, this date's own credit notes left out (a restart
        // computes them again, identically).
        let concerned: Vec<&str> = invoices
            .iter()
            .filter(|inv| {
                negative.iter().any(|d| {
                    inv.invoice_id == d.invoice_id
                        || inv
                            .lines
                            .iter()
                            .any(|l| l.adjusts.as_deref() == Some(&d.invoice_id))
                })
            })
            .map(|inv| inv.invoice_id.as_str())
            .collect();
        let credited = self
            .credited_lines(tenant, &concerned, |id| {
                late_usage::credit_note_id(id, date)
            })
            .await?;
        let mut all = Vec::new();
        for d in negative {
            let (credit, stands_for) = late_usage::credit_lines(
                d,
                &invoices,
                |id, idx| {
                    credited
                        .get(&(id.to_owned(), idx))
                        .copied()
                        .unwrap_or_default()
                },
                currency,
            );
            if stands_for.is_zero() {
                continue;
            }
            let mut targets: Vec<String> = credit.iter().map(|(id, ..)| id.clone()).collect();
            targets.dedup();
            plan.pending.push((
                LateUsageView {
                    amount: -stands_for,
                    credit_notes: targets
                        .iter()
                        .map(|t| late_usage::credit_note_id(t, date))
                        .collect(),
                    ..late_usage::billed(d)
                },
                targets,
            ));
            all.extend(credit);
        }
        for (invoice_id, lines) in late_usage::per_invoice(&all) {
            let number = invoices
                .iter()
                .find(|i| i.invoice_id == invoice_id)
                .and_then(|i| i.number.clone())
                .unwrap_or_default();
            plan.credit_notes.push(own_credit_note(
                late_usage::credit_note_id(&invoice_id, date),
                customer,
                invoice_id,
                format!("Usage corrected after invoice {number} was finalized (late usage)"),
                &lines,
            ));
        }
        Ok(plan)
    }

    /// What issued credit notes took back from each line of these invoices, the credit note `own(invoice)` of each
    /// left out (the one a restart is issuing again).
    async fn credited_lines(
        &self,
        tenant: &str,
        invoice_ids: &[&str],
        own: impl Fn(&str) -> String,
    ) -> anyhow::Result<HashMap<(String, usize), Decimal>> {
        let mut notes = Vec::new();
        for id in invoice_ids {
            notes.extend(self.credit_notes.of_invoice(tenant, id).await?);
        }
        Ok(billing_store::credit_notes::credited_lines(&notes, |cn| {
            cn.credit_note_id == own(&cn.invoice_id)
        }))
    }

    /// Finalize a run's invoices in billing-date order; before an invoice whose total is negative, everything billed
    /// earlier is finalized (the invoices it credits may be among them) and the credit notes that carry its negative
    /// total to the customer's balance are issued ([`Self::carry_negative_total`]), so once it is stored they are.
    async fn finalize_carrying(
        &mut self,
        p: i32,
        mut rest: Vec<(String, InvoiceView)>,
    ) -> anyhow::Result<()> {
        rest.sort_by_key(|(_, inv)| inv.billing_date);
        while let Some(k) = rest.iter().position(|(_, i)| i.total < Decimal::ZERO) {
            let date = rest[k].1.billing_date;
            let from = rest
                .iter()
                .position(|(_, i)| i.billing_date >= date)
                .unwrap_or(k);
            let mut on_date = rest.split_off(from);
            self.finalize(p, rest).await?;
            let to = on_date
                .iter()
                .position(|(_, i)| i.billing_date > date)
                .unwrap_or(on_date.len());
            rest = on_date.split_off(to);
            for (t, inv) in on_date.iter_mut() {
                if inv.total < Decimal::ZERO {
                    inv.carried_by = self.carry_negative_total(t, inv).await?;
                }
            }
            self.finalize(p, on_date).await?;
        }
        self.finalize(p, rest).await
    }

    /// Carry the negative total of an invoice being finalized to the customer's credit balance: credit notes of
    /// type `credit` on the invoices that charged the fees it credits (see
    /// `billing_store::credit_notes::unused_time_credits`); returns their ids. A refused one is logged.
    async fn carry_negative_total(
        &mut self,
        tenant: &str,
        inv: &InvoiceView,
    ) -> anyhow::Result<Vec<String>> {
        let invoices = self.store.invoices_of(tenant, &inv.customer_id).await?;
        let date = inv.billing_date;
        // Only the invoices with a fee line of a subscription it credits can be credited.
        let credited_subs: HashSet<Option<&str>> = inv
            .lines
            .iter()
            .filter(|l| l.kind == "proration_credit")
            .map(|l| l.subscription_id.as_deref())
            .collect();
        let charged: Vec<&str> = invoices
            .iter()
            .filter(|p| {
                p.invoice_id != inv.invoice_id
                    && p.billing_date < date
                    && p.lines.iter().any(|l| {
                        l.kind == "subscription_fee"
                            && credited_subs.contains(&l.subscription_id.as_deref())
                    })
            })
            .map(|p| p.invoice_id.as_str())
            .collect();
        let credited = self
            .credited_lines(tenant, &charged, |id| {
                billing_store::credit_notes::unused_time_credit_note_id(id, date)
            })
            .await?;
        let lines = billing_store::credit_notes::unused_time_credits(inv, &invoices, |id, i| {
            credited
                .get(&(id.to_owned(), i))
                .copied()
                .unwrap_or_default()
        });
        let mut issued = Vec::new();
        for (invoice_id, credit) in late_usage::per_invoice(&lines) {
            let req = own_credit_note(
                billing_store::credit_notes::unused_time_credit_note_id(&invoice_id, date),
                &inv.customer_id,
                invoice_id.clone(),
                format!(
                    "Unused time of a fee paid in advance, credited by the invoice of {}",
                    date.format("%Y-%m-%d")
                ),
                &credit,
            );
            let at = inv.issued_at.unwrap_or(date);
            match self.credit_note(tenant, at, &req).await? {
                Ok(()) => issued.push(req.credit_note_id),
                Err(reason) => {
                    tracing::warn!(
                        tenant,
                        customer = inv.customer_id,
                        invoice = invoice_id,
                        reason,
                        "unused-time credit note refused"
                    )
                }
            }
        }
        if issued.is_empty() {
            tracing::warn!(
                tenant,
                customer = inv.customer_id,
                invoice = inv.invoice_id,
                total = %inv.total,
                "negative total not carried: no earlier invoice charged the fees it credits"
            );
        }
        Ok(issued)
    }

    /// Issue the credit notes of a late-usage plan and return the corrections to record: the positive ones and the
    /// negative ones whose credit notes were all issued (a refused one is logged and left for the next bill run).
    async fn issue_late_credits(
        &mut self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
        plan: LatePlan,
    ) -> anyhow::Result<Vec<LateUsageView>> {
        let mut refused: HashSet<String> = HashSet::new();
        for req in &plan.credit_notes {
            if let Err(reason) = self.credit_note(tenant, at, req).await? {
                tracing::warn!(
                    tenant,
                    customer,
                    invoice = req.invoice_id,
                    reason,
                    "late-usage credit note refused"
                );
                refused.insert(req.invoice_id.clone());
            }
        }
        let mut records = plan.records;
        records.extend(
            plan.pending
                .into_iter()
                .filter(|(_, targets)| !targets.iter().any(|t| refused.contains(t)))
                .map(|(r, _)| r),
        );
        Ok(records)
    }

    /// Issue a requested credit note, or refuse it (`Ok(Err(reason))`, recorded in the read model); store and
    /// Kafka failures are errors (the request is handled again).
    async fn credit_note(
        &mut self,
        tenant: &str,
        at: DateTime<Utc>,
        req: &CreditNoteRequested,
    ) -> anyhow::Result<Result<(), String>> {
        let mut was_numbering = false;
        if let Some(done) = self.credit_notes.get(tenant, &req.credit_note_id).await? {
            match done.status.as_str() {
                billing_store::credit_notes::ISSUED => return Ok(Ok(())),
                billing_store::credit_notes::REJECTED => {
                    return Ok(Err(done.rejection_reason.unwrap_or_default()))
                }
                _ => was_numbering = true,
            }
        }
        let invoice = self.store.invoice(tenant, &req.invoice_id).await?;
        let priced = match &invoice {
            None => Err(format!("invoice_id: no invoice {}", req.invoice_id)),
            Some(inv) => {
                let issued = self
                    .credit_notes
                    .of_invoice(tenant, &inv.invoice_id)
                    .await?;
                let paid_by_provider = self
                    .payments
                    .paid_by_provider(tenant, &inv.invoice_id)
                    .await?;
                credit_notes::price(
                    req,
                    &credit_notes::Creditable {
                        invoice: inv,
                        issued: &issued,
                        paid_by_provider,
                    },
                )
                .map_err(|r| r.to_string())
            }
        };
        let (inv, amounts) = match (invoice, priced) {
            (Some(inv), Ok(amounts)) => (inv, amounts),
            (inv, Err(reason)) => {
                let row = credit_notes::rejected(req, inv.as_ref(), &reason, at);
                self.credit_notes.put(tenant, &row).await?;
                self.metrics
                    .credit_notes
                    .with_label_values(&["rejected"])
                    .inc();
                return Ok(Err(reason));
            }
            (None, Ok(_)) => unreachable!("priced without an invoice"),
        };
        let mut cn = credit_notes::view(req, &inv, &amounts, at);
        let prefix = format!("{}-CN", self.prefix(tenant, "tenant"));
        credit_notes::number(
            &self.store,
            &self.credit_notes,
            tenant,
            &mut cn,
            was_numbering,
            &prefix,
            self.settings.invoicer.number_width,
        )
        .await?;
        let ev = credit_notes::created_event(tenant, &cn, req.kind);
        let delivery = self.send_invoice_event(tenant, &cn.customer_id, &ev)?;
        billing_runtime::publish::ack(delivery).await?;
        credit_notes::record(&self.ch, &self.credit_notes, tenant, &mut cn).await?;
        self.metrics
            .credit_notes
            .with_label_values(&["issued"])
            .inc();
        Ok(Ok(()))
    }

    /// Issue a one-off invoice of add-ons at `at` (its billing date): numbered in the invoices' sequence,
    /// published as `invoice.finalized` (so payments collects it), recorded and stored like any invoice. Its
    /// `invoices_by_date` entry lives in [`one_off_partition`], so a crash mid-numbering finds its number again
    /// and the bill run never mistakes it for a billing date. `Err(reason)` when it cannot be priced.
    async fn one_off(
        &mut self,
        p: i32,
        tenant: &str,
        at: DateTime<Utc>,
        req: &OneOffInvoiceRequested,
    ) -> anyhow::Result<Result<(), String>> {
        let outcome = self
            .reference
            .one_off_invoice(tenant, &req.customer_id, &req.fees);
        self.issue_one_off(p, tenant, at, &req.customer_id, &req.invoice_id, outcome)
            .await
    }

    /// Number and issue the one-off invoice `id` of `outcome` (once: an invoice already numbered is left alone).
    async fn issue_one_off(
        &mut self,
        p: i32,
        tenant: &str,
        at: DateTime<Utc>,
        customer: &str,
        id: &str,
        outcome: Result<billing_core::invoicing::InvoiceOutcome, String>,
    ) -> anyhow::Result<Result<(), String>> {
        if let Some(done) = self.store.invoice(tenant, id).await? {
            if done.number.is_some() {
                return Ok(Ok(()));
            }
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(reason) => return Ok(Err(reason)),
        };
        let view = billing_store::invoices::customer_invoice(
            &self.reference,
            tenant,
            customer,
            at,
            InvoiceStatus::Finalized,
            Some(at),
            &outcome,
        );
        let mut inv = match view {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        };
        inv.invoice_id = id.to_owned();
        inv.finalizes_at = at;
        inv.one_off = true;
        self.number_and_issue(one_off_partition(p), vec![(tenant.to_owned(), inv)], false)
            .await?;
        Ok(Ok(()))
    }

    /// Issue the invoice of credits bought for a wallet (a one-off invoice, see [`Self::one_off`]).
    async fn credit_purchase(
        &mut self,
        p: i32,
        tenant: &str,
        at: DateTime<Utc>,
        top_up: &billing_schemas::lifecycle::WalletToppedUp,
    ) -> anyhow::Result<Result<(), String>> {
        let Some(id) = top_up.invoice_id.clone() else {
            return Ok(Ok(()));
        };
        let outcome = self
            .reference
            .credit_purchase_invoice(tenant, &top_up.customer_id, top_up);
        self.issue_one_off(p, tenant, at, &top_up.customer_id, &id, outcome)
            .await
    }

    /// Void a finalized invoice nothing was paid on: `invoice.voided` (event id `void.<invoice>`, so a repeat after
    /// a crash is the same event), then the stored invoice (status `void`, number kept) and ClickHouse
    /// `invoice_voids`. `Err(reason)` when it may not be voided (paid or credited since the API checked).
    async fn void(
        &mut self,
        p: i32,
        tenant: &str,
        at: DateTime<Utc>,
        req: &InvoiceVoidRequested,
    ) -> anyhow::Result<Result<(), String>> {
        let Some(mut inv) = self.store.invoice(tenant, &req.invoice_id).await? else {
            return Ok(Err(format!("invoice_id: no invoice {}", req.invoice_id)));
        };
        let payment = self
            .payments
            .invoice_payment(tenant, &inv.invoice_id)
            .await?;
        let credited = self
            .credit_notes
            .of_invoice(tenant, &inv.invoice_id)
            .await?;
        match void_refusal(&inv, &req.customer_id, payment.as_ref(), &credited) {
            Ok(()) => {}
            Err(VoidRefusal::AlreadyVoid) => return Ok(Ok(())),
            Err(VoidRefusal::Refused(field, reason)) => {
                self.metrics.voids.with_label_values(&["rejected"]).inc();
                return Ok(Err(format!("{field}: {reason}")));
            }
        }
        let reason = req.reason.clone().unwrap_or_default();
        inv.status = InvoiceStatus::Void;
        inv.voided_at = Some(at);
        let ev = billing_schemas::invoice::InvoiceEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("void.{}", inv.invoice_id),
            occurred_at: at,
            payload: billing_schemas::invoice::Invoice::InvoiceVoided(
                billing_schemas::invoice::InvoiceVoided {
                    invoice_id: inv.invoice_id.clone(),
                    customer_id: inv.customer_id.clone(),
                    reason: reason.clone(),
                    number: inv.number.clone(),
                },
            ),
        };
        let delivery = self.send_invoice_event(tenant, &inv.customer_id, &ev)?;
        billing_runtime::publish::ack(delivery).await?;
        billing_store::invoice_facts::insert_void(&self.ch, tenant, &inv, &reason).await?;
        let by_date = if inv.one_off { one_off_partition(p) } else { p };
        self.store.put_invoice(tenant, &inv, by_date).await?;
        self.metrics.voids.with_label_values(&["voided"]).inc();
        Ok(Ok(()))
    }

    /// Queue an event on `billing.invoices` (Avro, keyed by its customer); the delivery is acknowledged by the caller.
    fn send_invoice_event(
        &self,
        tenant: &str,
        customer: &str,
        ev: &billing_schemas::invoice::InvoiceEvent,
    ) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
        let payload = encode(ev, Encoding::Avro)?;
        let key = customer_key(tenant, customer);
        let headers = OwnedHeaders::new().insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(Encoding::Avro.content_type()),
        });
        self.producer
            .send_result(
                FutureRecord::to(&self.topics.invoices)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
            )
            .map_err(|(e, _)| anyhow::anyhow!("publishing on billing.invoices failed: {e}"))
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
