//! The analysts' facts the invoicer keeps in ClickHouse (`docs/analytics.md`), off the paths that serve the API and
//! bill: a ClickHouse outage delays them and nothing else.
//!
//! - [`MrrWriter`]: each subscription's MRR (`subscription_mrr`), computed from the invoicer's fold whenever the
//!   subscription or its plan changes and handed to a task that writes them (the latest per subscription wins),
//!   retrying with backoff. What a crash loses is written again when a partition's history has been read: the
//!   service hands over every subscription of the partition, and the task writes those whose stored MRR differs.
//! - [`PaymentFacts`]: a consumer group of its own on `billing.payments` that inserts the money movements
//!   (`payments`) and commits only after the insert, so a ClickHouse outage only makes it lag.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use billing_runtime::config::Settings;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::Shutdown;
use billing_schemas::decode;
use billing_schemas::payment::{Payment, PaymentEvent};
use billing_store::analytics::{self, MrrRow, PaymentKind, PaymentRow};
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// How often the MRR task writes what it holds.
const MRR_EVERY: Duration = Duration::from_millis(200);
/// The most payment events inserted at once.
const FACTS_BATCH: usize = 500;

/// What the service hands to the MRR task: every row of a subscription's new version.
enum MrrUpdate {
    /// A change: written.
    Changed(Vec<MrrRow>),
    /// A partition read again: written only if what is stored differs.
    Check(Vec<MrrRow>),
}

/// The handle the service uses; the task runs until shutdown (then writes what it holds, once, within 5 s).
#[derive(Clone)]
pub struct MrrWriter {
    tx: mpsc::UnboundedSender<MrrUpdate>,
}

/// Split rows into one `Vec` per subscription (rows of one subscription are contiguous).
fn per_subscription(rows: Vec<MrrRow>) -> Vec<Vec<MrrRow>> {
    let mut out: Vec<Vec<MrrRow>> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(last)
                if last[0].tenant_id == r.tenant_id
                    && last[0].subscription_id == r.subscription_id =>
            {
                last.push(r)
            }
            _ => out.push(vec![r]),
        }
    }
    out
}

/// Whether two versions of a subscription's MRR say the same (their version aside).
fn same(a: &[MrrRow], b: &[MrrRow]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            MrrRow {
                version: 0,
                ..x.clone()
            } == MrrRow {
                version: 0,
                ..y.clone()
            }
        })
}

type Key = (String, String);

impl MrrWriter {
    /// Start the task.
    pub fn spawn(
        ch: clickhouse::Client,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(mrr_task(ch, metrics, shutdown, rx));
        (MrrWriter { tx }, task)
    }

    /// A subscription changed: its rows (every subscription's rows contiguous).
    pub fn changed(&self, rows: Vec<MrrRow>) {
        for sub in per_subscription(rows) {
            let _ = self.tx.send(MrrUpdate::Changed(sub));
        }
    }

    /// A partition's history was read again: the rows of its subscriptions, to write where the store differs.
    pub fn check(&self, rows: Vec<MrrRow>) {
        for sub in per_subscription(rows) {
            let _ = self.tx.send(MrrUpdate::Check(sub));
        }
    }
}

async fn mrr_task(
    ch: clickhouse::Client,
    metrics: Metrics,
    shutdown: Shutdown,
    mut rx: mpsc::UnboundedReceiver<MrrUpdate>,
) {
    // Per (tenant, subscription): the rows to write, and whether to compare them with the store first.
    let mut pending: HashMap<Key, (Vec<MrrRow>, bool)> = HashMap::new();
    let mut backoff = MRR_EVERY;
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(backoff) => false,
        };
        while let Ok(u) = rx.try_recv() {
            let (rows, check) = match u {
                MrrUpdate::Changed(r) => (r, false),
                MrrUpdate::Check(r) => (r, true),
            };
            let key = (rows[0].tenant_id.clone(), rows[0].subscription_id.clone());
            // A change written after a check supersedes it; a check never downgrades a pending change.
            let check = check && pending.get(&key).is_none_or(|(_, c)| *c);
            pending.insert(key, (rows, check));
        }
        metrics.mrr_pending.set(pending.len() as i64);
        if pending.is_empty() {
            if stop {
                return;
            }
            continue;
        }
        let attempt = write(&ch, &mut pending);
        let written = if stop {
            tokio::time::timeout(Duration::from_secs(5), attempt)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("shutting down")))
        } else {
            attempt.await
        };
        match written {
            Ok(()) => backoff = MRR_EVERY,
            Err(e) => {
                metrics.analytics_retries.with_label_values(&["mrr"]).inc();
                tracing::warn!(error = %format!("{e:#}"), subscriptions = pending.len(), "MRR not written; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        metrics.mrr_pending.set(pending.len() as i64);
        if stop {
            if !pending.is_empty() {
                tracing::warn!(
                    subscriptions = pending.len(),
                    "MRR left unwritten at shutdown; written again when their partitions are next read"
                );
            }
            return;
        }
    }
}

/// Write what is pending (dropping checked rows the store already has); on success nothing is left.
async fn write(
    ch: &clickhouse::Client,
    pending: &mut HashMap<Key, (Vec<MrrRow>, bool)>,
) -> anyhow::Result<()> {
    let tenants: HashSet<String> = pending
        .iter()
        .filter(|(_, (_, check))| *check)
        .map(|((t, _), _)| t.clone())
        .collect();
    for tenant in tenants {
        let stored = analytics::latest_mrr(ch, &tenant).await?;
        for rows in per_subscription(stored) {
            let key = (tenant.clone(), rows[0].subscription_id.clone());
            if pending
                .get(&key)
                .is_some_and(|(p, check)| *check && same(p, &rows))
            {
                pending.remove(&key);
            }
        }
    }
    let rows: Vec<MrrRow> = pending.values().flat_map(|(r, _)| r.clone()).collect();
    analytics::insert_mrr(ch, &rows).await?;
    pending.clear();
    Ok(())
}

/// The ClickHouse row of a payment event, if it moves money (`Ok(None)` otherwise); an amount that is not a
/// decimal is refused.
pub fn payment_row(ev: &PaymentEvent) -> Result<Option<PaymentRow>, String> {
    let (kind, invoice, customer, amount, currency) = match &ev.payload {
        Payment::PaymentSucceeded(s) => (
            PaymentKind::Succeeded,
            &s.invoice_id,
            &s.customer_id,
            s.amount.as_str(),
            s.currency.as_str(),
        ),
        Payment::InvoicePaidOutOfBand(o) => (
            PaymentKind::OutOfBand,
            &o.invoice_id,
            &o.customer_id,
            o.amount.as_str(),
            o.currency.as_str(),
        ),
        Payment::CreditApplied(c) => (
            PaymentKind::Credit,
            &c.invoice_id,
            &c.customer_id,
            c.amount.as_str(),
            c.currency.as_str(),
        ),
        Payment::RefundSucceeded(r) => (
            PaymentKind::Refund,
            &r.invoice_id,
            &r.customer_id,
            r.amount.as_str(),
            r.currency.as_str(),
        ),
        Payment::InvoiceUncollectible(u) => (
            PaymentKind::Uncollectible,
            &u.invoice_id,
            &u.customer_id,
            "0",
            "",
        ),
        _ => return Ok(None),
    };
    let amount = amount
        .parse::<Decimal>()
        .map_err(|e| format!("amount {amount:?}: {e}"))?;
    Ok(Some(PaymentRow::new(
        &ev.tenant_id,
        &ev.event_id,
        invoice,
        customer,
        kind,
        amount,
        currency,
        ev.occurred_at,
    )))
}

/// The consumer of `billing.payments` that keeps ClickHouse `payments`.
pub struct PaymentFacts {
    topics: Topics,
    consumer: StreamConsumer<DefaultConsumerContext>,
    ch: clickhouse::Client,
    metrics: Metrics,
}

impl PaymentFacts {
    /// Subscribe, in the group `<invoicer group>.payment-facts`.
    pub fn new(
        settings: &Settings,
        ch: clickhouse::Client,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let consumer = kafka::consumer(
            &settings.kafka,
            &format!("{}.payment-facts", settings.invoicer.group_id),
            DefaultConsumerContext,
        )?;
        consumer.subscribe(&[&topics.payments])?;
        Ok(PaymentFacts {
            topics,
            consumer,
            ch,
            metrics,
        })
    }

    /// Run until shutdown: a batch of events, its rows inserted (retried with backoff), then its offsets committed.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = self.consumer.recv() => m,
            };
            let mut batch: Vec<OwnedMessage> = match first {
                Ok(m) => vec![m.detach()],
                Err(e) => {
                    tracing::warn!(error = %e, "payment facts consumer error");
                    continue;
                }
            };
            while batch.len() < FACTS_BATCH {
                match tokio::time::timeout(Duration::from_millis(50), self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let rows = self.rows(&batch);
            let mut backoff = Duration::from_millis(200);
            while let Err(e) = analytics::insert_payments(&self.ch, &rows).await {
                self.metrics
                    .analytics_retries
                    .with_label_values(&["payments"])
                    .inc();
                tracing::warn!(error = %format!("{e:#}"), rows = rows.len(), "payment facts not written; retrying");
                tokio::select! {
                    // Not committed: read again by the next owner.
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            let mut next: HashMap<i32, i64> = HashMap::new();
            for m in &batch {
                let n = next.entry(m.partition()).or_default();
                *n = (*n).max(m.offset() + 1);
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            for (p, o) in next {
                tpl.add_partition_offset(&self.topics.payments, p, rdkafka::Offset::Offset(o))?;
            }
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                // Read again after a restart; the rows collapse by event id.
                tracing::warn!(error = %e, "payment facts offsets not committed");
            }
        }
    }

    fn rows(&self, batch: &[OwnedMessage]) -> Vec<PaymentRow> {
        let mut rows = Vec::new();
        for m in batch {
            let row =
                decode::<PaymentEvent>(m.payload().unwrap_or_default(), kafka::content_type(m))
                    .map_err(|e| e.to_string())
                    .and_then(|ev| payment_row(&ev));
            match row {
                Ok(Some(r)) => rows.push(r),
                Ok(None) => {}
                // The payments service and the read models skip it too; nothing in it can be counted.
                Err(why) => tracing::warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    why,
                    "payment event left out of the facts"
                ),
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_schemas::payment::{InvoiceUncollectible, PaymentMethodRef, PaymentSucceeded};

    fn ev(payload: Payment) -> PaymentEvent {
        PaymentEvent {
            tenant_id: "t".into(),
            event_id: "e".into(),
            occurred_at: "2025-01-20T00:00:00Z".parse().unwrap(),
            payload,
        }
    }

    #[test]
    fn money_movements_become_rows_and_the_rest_does_not() {
        let paid = ev(Payment::PaymentSucceeded(PaymentSucceeded {
            attempt_id: "a".into(),
            invoice_id: "i".into(),
            customer_id: "c".into(),
            currency: "EUR".into(),
            amount: "12.50".into(),
            attempt_number: 1,
            provider_reference: "ref".into(),
        }));
        let row = payment_row(&paid).unwrap().unwrap();
        assert_eq!(
            (
                row.kind.as_str(),
                row.amount,
                row.currency.as_str(),
                row.invoice_id.as_str()
            ),
            ("succeeded", 12_500_000_000, "EUR", "i")
        );
        let gave_up = ev(Payment::InvoiceUncollectible(InvoiceUncollectible {
            invoice_id: "i".into(),
            customer_id: "c".into(),
            reason: "declined".into(),
            action: "none".into(),
        }));
        let row = payment_row(&gave_up).unwrap().unwrap();
        assert_eq!((row.kind.as_str(), row.amount), ("uncollectible", 0));
        let method = ev(Payment::DefaultPaymentMethodSet(PaymentMethodRef {
            customer_id: "c".into(),
            payment_method_id: "pm".into(),
        }));
        assert_eq!(payment_row(&method).unwrap(), None);
        let mut bad = paid.clone();
        if let Payment::PaymentSucceeded(s) = &mut bad.payload {
            s.amount = "12,50".into();
        }
        assert!(payment_row(&bad).is_err());
    }

    #[test]
    fn rows_split_per_subscription_and_compare_without_their_version() {
        let row = |sub: &str, no: u32, version: u64| MrrRow {
            tenant_id: "t".into(),
            subscription_id: sub.into(),
            customer_id: "c".into(),
            version,
            segment_no: no,
            plan_code: "p".into(),
            currency: "EUR".into(),
            starts_at: 1,
            ends_at: analytics::RUNNING,
            mrr: 5,
        };
        let split = per_subscription(vec![row("a", 0, 1), row("a", 1, 1), row("b", 0, 1)]);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        assert!(same(&[row("a", 0, 1)], &[row("a", 0, 9)]));
        assert!(!same(&[row("a", 0, 1)], &[row("a", 0, 1), row("a", 1, 1)]));
        let mut other = row("a", 0, 1);
        other.mrr = 6;
        assert!(!same(&[row("a", 0, 1)], &[other]));
    }
}
